"""The study's report: ``results.json``, ``results.csv``, ``results.md`` and PNG plots.

Everything is read back from the checkpoint store's manifest (and the merge diagnostics
files), so ``pactmerge report RUN_DIR`` regenerates it at any time. Rows follow the
published layout: zero-shot, individual, joint, sequential, then each merge with and
without PACT; columns: the tasks, the absolute average and the normalized average (%).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from pactmerge.checkpoints import CheckpointStore
from pactmerge.errors import StageError
from pactmerge.fileio import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


def collect_rows(store: CheckpointStore, tasks: list[str]) -> list[dict[str, Any]]:
    """One row per evaluated model: name, kind, per-task test accuracy (0..1), averages, α."""
    individual = {}
    for t in tasks:
        if store.has(f"finetuned/{t}"):
            acc = store.entry(f"finetuned/{t}").get("metrics", {}).get("test", {}).get(t)
            if acc is not None:
                individual[t] = acc
    rows = []

    def add(name: str, kind: str, accs: dict[str, float], **extra: Any) -> None:
        accs = {t: accs[t] for t in tasks if t in accs}
        if not accs:
            return
        avg = sum(accs.values()) / len(accs)
        norm = None
        if len(accs) == len(tasks) and len(individual) == len(tasks) and all(v > 0 for v in individual.values()):
            norm = sum(accs[t] / individual[t] for t in tasks) / len(tasks)
        rows.append({"name": name, "kind": kind, "accuracy": accs, "avg_absolute": avg, "avg_normalized": norm, **extra})

    if store.has("pretrained"):
        add("zero-shot", "zero_shot", store.entry("pretrained").get("metrics", {}).get("test", {}))
    if len(individual) == len(tasks):
        add("individual", "individual", individual)
    for name in ("joint", "sequential"):
        if store.has(name):
            e = store.entry(name)
            add(name, name, e.get("metrics", {}).get("test", {}), order=e.get("order"))
    for name in sorted(store.names("merged/"), key=_merge_order):
        e = store.entry(name)
        add(name.split("/", 1)[1], "merged", e.get("metrics", {}).get("test", {}), method=e.get("method"),
            alpha=e.get("alpha"), alpha_search=e.get("alpha_search"), diagnostics_file=e.get("diagnostics_file"),
            timings=e.get("timings"))
    return rows


_METHOD_ORDER = ["weight_averaging", "task_arithmetic", "ties", "tsvm", "iso_c", "iso_cts"]


def _merge_order(name: str) -> tuple:
    """Published order: each method, then its PACT form (exact, then randomized)."""
    mid = name.split("/", 1)[1]
    base = mid.removeprefix("pact+").removesuffix("-rsvd")
    rank = _METHOD_ORDER.index(base) if base in _METHOD_ORDER else len(_METHOD_ORDER)
    return (rank, base, mid.startswith("pact+"), mid.endswith("-rsvd"))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def markdown_table(rows: list[dict[str, Any]], tasks: list[str]) -> str:
    head = ["model", *tasks, "avg abs.", "avg norm.", "α"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], *(_pct(r["accuracy"].get(t)) for t in tasks), _pct(r["avg_absolute"]),
                 _pct(r["avg_normalized"]), "" if r.get("alpha") is None else f"{r['alpha']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict[str, Any]], tasks: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "kind", *tasks, "avg_absolute", "avg_normalized", "alpha", "alpha_evaluations"])
    for r in rows:
        evals = (r.get("alpha_search") or {}).get("evaluations", "")
        w.writerow([r["name"], r["kind"], *(r["accuracy"].get(t, "") for t in tasks), r["avg_absolute"],
                    "" if r["avg_normalized"] is None else r["avg_normalized"],
                    "" if r.get("alpha") is None else r["alpha"], evals])
    return buf.getvalue()


def read_provenance(run_dir: Path) -> dict[str, Any] | None:
    """The run's provenance record (``run.json``'s ``provenance``), or None for older runs."""
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    prov = info.get("provenance") if isinstance(info, dict) else None
    return prov if isinstance(prov, dict) else None


def write_report(run_dir: str | Path, tasks: list[str] | None = None) -> dict[str, Path]:
    """Write the report files into ``run_dir``; returns name -> path."""
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise StageError(f"{run_dir}: no checkpoint store here (manifest.json missing); run `pactmerge run` first")
    store = CheckpointStore(run_dir, create=False)
    if tasks is None:
        tasks = list(store.manifest.get("tasks") or sorted(n.split("/", 1)[1] for n in store.names("finetuned/")))
    rows = collect_rows(store, tasks)
    if not rows:
        raise StageError(f"{run_dir}: nothing has been evaluated yet; run `pactmerge evaluate CONFIG` first")
    paths = {"json": run_dir / "results.json", "csv": run_dir / "results.csv", "md": run_dir / "results.md"}
    results: dict[str, Any] = {"tasks": tasks, "rows": rows}
    with contextlib.suppress(OSError, ValueError, AttributeError):  # seconds per stage, from pipeline.study
        results["timings"] = json.loads((run_dir / "timings.json").read_text())["stages"]
    prov = read_provenance(run_dir)
    table = markdown_table(rows, tasks)
    if prov:
        results["provenance"] = prov
        from pactmerge.provenance import footer

        table += f"\n{footer(prov)}\n"
    write_json_atomic(paths["json"], results)
    write_text_atomic(paths["csv"], csv_text(rows, tasks))
    write_text_atomic(paths["md"], table)
    from pactmerge.pipeline.plots import write_plots

    paths.update(write_plots(run_dir, rows, tasks))
    log.info("report written to %s", run_dir)
    return paths

