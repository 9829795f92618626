"""The published table a run reproduces, beside the run's own numbers.

A run config (the presets in ``configs/reproduce/``) may carry a ``published:`` block::

    published:
      source: "Gargiulo et al., Task Singular Vectors: Reducing Task Interference in Model Merging, CVPR 2025, Table 1"
      rows:                      # report row name -> the published average test accuracy, in percent
        zero-shot: {absolute: 48.0}
        task_arithmetic: {absolute: 70.8, normalized: 77.2}
        tsvm: {absolute: 85.9, normalized: 92.3, source: "another table, when it differs from the block's"}

Row names are the report's (``zero-shot``, ``individual``, ``joint``, ``sequential``, merge ids
such as ``ties`` or ``pact+tsvm``). ``add_published`` (called by the report) adds to each matching
row ``published = {absolute, normalized, source}`` and the differences ``ours - published`` in
points, and returns a Markdown section with those columns. Rows without a published value (PACT
rows are new) show "—". ``published`` is not part of a run's identity: correcting a number does
not invalidate a finished run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from pactmerge.errors import ConfigError

_VALUES = ("absolute", "normalized")


def check_published(block: Mapping[str, Any] | None, *, where: str = "config") -> None:
    """``ConfigError`` naming the key when a ``published:`` block is malformed."""
    if block is None:
        return
    if not isinstance(block.get("source"), str) or not block["source"].strip():
        raise ConfigError(f"{where}: published.source must name the document and table the numbers come from")
    rows = block.get("rows")
    if not isinstance(rows, Mapping) or not rows:
        raise ConfigError(f"{where}: published.rows must map report rows (zero-shot, individual, ties, ...) "
                          "to {absolute: ..., normalized: ...}")
    extra = set(block) - {"source", "rows", "note"}
    if extra:
        raise ConfigError(f"{where}: published: unknown keys {sorted(extra)}; known: source, rows, note")
    for name, row in rows.items():
        if not isinstance(row, Mapping) or not set(row) & set(_VALUES):
            raise ConfigError(f"{where}: published.rows.{name} must give absolute and/or normalized (percent)")
        for key, value in row.items():
            if key == "source":
                if not isinstance(value, str):
                    raise ConfigError(f"{where}: published.rows.{name}.source must be text")
            elif key not in _VALUES:
                raise ConfigError(f"{where}: published.rows.{name}.{key}: unknown; use absolute, normalized, source")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise ConfigError(f"{where}: published.rows.{name}.{key} = {value!r} must be a percentage in [0, 100]")


def read_published(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``published`` block of the config recorded in ``run_dir/run.json`` (None when absent)."""
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    block = (info.get("config") or {}).get("published") if isinstance(info, dict) else None
    return block if isinstance(block, dict) else None


def annotate(rows: list[dict[str, Any]], block: Mapping[str, Any]) -> None:
    """Add ``published`` and ``diff_vs_published`` (points) to each row the block names."""
    for row in rows:
        pub = (block.get("rows") or {}).get(row["name"])
        if not pub:
            continue
        row["published"] = {k: pub.get(k) for k in _VALUES} | {"source": pub.get("source", block["source"])}
        ours = {"absolute": row.get("avg_absolute"), "normalized": row.get("avg_normalized")}
        row["diff_vs_published"] = {k: None if ours[k] is None or pub.get(k) is None
                                    else round(100 * ours[k] - float(pub[k]), 2) for k in _VALUES}


def markdown_section(rows: list[dict[str, Any]], block: Mapping[str, Any]) -> str:
    """The comparison table (ours, published, difference; absolute and normalized) and its sources."""
    def pct(x: Any) -> str:
        return "—" if x is None else f"{100 * x:.1f}"

    def pub(x: Any) -> str:
        return "—" if x is None else f"{float(x):.1f}"

    def diff(x: Any) -> str:
        return "—" if x is None else f"{x:+.1f}"

    lines = ["", f"Published: {block['source']}", "",
             "| model | avg abs. | published | Δ | avg norm. | published | Δ |", "|---|---|---|---|---|---|---|"]
    sources = {block["source"]}
    for r in rows:
        p, d = r.get("published") or {}, r.get("diff_vs_published") or {}
        if p.get("source"):
            sources.add(p["source"])
        lines.append(f"| {r['name']} | {pct(r.get('avg_absolute'))} | {pub(p.get('absolute'))} | "
                     f"{diff(d.get('absolute'))} | {pct(r.get('avg_normalized'))} | {pub(p.get('normalized'))} | "
                     f"{diff(d.get('normalized'))} |")
    lines += [f"- source: {s}" for s in sorted(sources - {block['source']})]
    return "\n".join(lines) + "\n"


def add_published(run_dir: str | Path, rows: list[dict[str, Any]]) -> str:
    """Annotate ``rows`` with the run's published numbers; the Markdown section ("" without a block)."""
    block = read_published(run_dir)
    if not block:
        return ""
    annotate(rows, block)
    return markdown_section(rows, block)
