"""PNG plots of a study (matplotlib, Agg backend): per-task accuracy by model (with 95%
bootstrap error bars where the rows carry ``accuracy_ci95``), validation accuracy against α
(one panel per base method: plain, ``pact+`` and ``pact+…-rsvd`` in one colour family told
apart by line style, the chosen α marked, the widened part of the searched range shaded),
joint vs sequential vs the best merge, and PACT's intrusion energy per layer before and
after cleaning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pactmerge.figures import pyplot, save_png


def write_plots(run_dir: Path, rows: list[dict[str, Any]], tasks: list[str]) -> dict[str, Path]:
    plt = pyplot()
    out = {}
    plot_dir = run_dir / "plots"

    # 1. per-task accuracy by model (grouped bars)
    fig, ax = plt.subplots(figsize=(max(6, (0.9 + 0.06 * len(rows)) * len(tasks) + 2), 4.5))
    width = 0.8 / max(len(rows), 1)
    colours = row_colours(rows)
    for i, r in enumerate(rows):
        xs = [j + i * width for j in range(len(tasks))]
        ys = [100 * r["accuracy"].get(t, 0) for t in tasks]
        ax.bar(xs, ys, width, label=r["name"], color=colours[r["name"]], edgecolor="white", linewidth=0.3,
               hatch=_HATCH[_variant(r["name"])] if r["kind"] == "merged" else None,
               yerr=_error_bars(r, tasks), error_kw={"elinewidth": 0.7, "capsize": 1.5})
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks)
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title("Per-task accuracy by model" + (" (95% bootstrap intervals)" if any(r.get("accuracy_ci95")
                                                                                   for r in rows) else ""))
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    out["per_task"] = save_png(fig, plot_dir / "per_task_accuracy.png")

    # 2. validation accuracy against alpha, one panel per base method
    merged = [r for r in rows if r["kind"] == "merged" and r.get("alpha_search")]
    replicates = any(r.get("alpha_seeds") for r in rows)
    note = "each seed replicate's α search:\nseed-<s>/plots/alpha_curves.png" if replicates else "no α search recorded"
    out["alpha"] = save_png(alpha_curves_figure(merged, note), plot_dir / "alpha_curves.png")

    # 3. joint vs sequential vs the best merge
    picks = [r for r in rows if r["kind"] in ("individual", "joint", "sequential")]
    if merged:
        picks.append(max(merged, key=lambda r: r["avg_absolute"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    names = [r["name"] for r in picks]
    ax.bar(names, [100 * r["avg_absolute"] for r in picks], color=["#888", "#1f77b4", "#ff7f0e", "#2ca02c"][: len(picks)])
    ax.set_ylabel("average test accuracy (%)")
    ax.set_title("Joint vs sequential fine-tuning vs the best merge")
    out["comparison"] = save_png(fig, plot_dir / "joint_sequential_merge.png")

    # 4. PACT intrusion energy per layer, before and after
    layers = _intrusion_by_layer(run_dir, merged)
    if layers:
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 4))
        names = list(layers)
        ax.plot(range(len(names)), [layers[n][0] for n in names], marker="o", label="before PACT")
        ax.plot(range(len(names)), [layers[n][1] for n in names], marker="s", label="after PACT")
        ax.set_xticks(range(len(names)), names, rotation=75, fontsize=6)
        ax.set_ylabel("intrusion energy E_in (mean over tasks and keys)")
        ax.set_title("PACT: task-vector energy in the pre-trained core")
        ax.legend()
        out["intrusion"] = save_png(fig, plot_dir / "pact_intrusion_energy.png")
    return out


def _error_bars(row: dict[str, Any], tasks: list[str]):
    """(2, T) distances below and above each bar (percent points), or None without intervals."""
    ci = row.get("accuracy_ci95") or {}
    if not all(t in ci for t in tasks):
        return None
    acc = [100 * row["accuracy"].get(t, 0) for t in tasks]
    return [[max(0.0, a - 100 * ci[t][0]) for a, t in zip(acc, tasks)],
            [max(0.0, 100 * ci[t][1] - a) for a, t in zip(acc, tasks)]]


_FAMILIES = ["Blues", "Oranges", "Greens", "Reds", "Purples", "Greys", "YlOrBr", "PuRd", "BuGn", "GnBu"]
# plain, pact+, pact+…-rsvd (and a plain -rsvd): shade within the family, line style, marker
_VARIANTS = {"plain": (0.95, "-", "o"), "pact": (0.7, "--", "s"), "pact-rsvd": (0.5, ":", "^"),
             "plain-rsvd": (0.8, "-.", "v")}


_HATCH = {"plain": None, "pact": "///", "pact-rsvd": "...", "plain-rsvd": None}
_TRAINED = {"zero_shot": "#c7c7c7", "individual": "#4d4d4d", "joint": "#8c564b", "sequential": "#e377c2"}


def row_colours(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Row name -> colour: trained rows their own neutral colours; merged rows the colour family of
    their base method (in order of first appearance, as in the α plot), shaded by PACT variant."""
    import matplotlib

    bases: list[str] = []
    out: dict[str, Any] = {}
    for r in rows:
        if r["kind"] != "merged":
            out[r["name"]] = _TRAINED.get(r["kind"], "#17becf")
            continue
        base = base_method(r["name"])
        if base not in bases:
            bases.append(base)
        cmap = matplotlib.colormaps[_FAMILIES[bases.index(base) % len(_FAMILIES)]]
        out[r["name"]] = cmap(_VARIANTS[_variant(r["name"])][0])
    return out


def _variant(name: str) -> str:
    return ("pact" if name.startswith("pact+") else "plain") + ("-rsvd" if name.endswith("-rsvd") else "")


def base_method(name: str) -> str:
    """``pact+tsvm-rsvd`` -> ``tsvm``."""
    return name.removeprefix("pact+").removesuffix("-rsvd")


def alpha_curves_figure(merged: list[dict[str, Any]], note: str = "no α search recorded"):
    """One panel per base method of ``merged`` rows (their ``alpha_search`` records): validation
    accuracy against α; the chosen α as a large marker; the part of the searched ``range`` outside
    the initial ``grid`` shaded in the curve's colour; ``at_limit`` searches noted in the legend."""
    import math

    import matplotlib

    plt = pyplot()
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in merged:
        groups.setdefault(base_method(r["name"]), []).append(r)
    if not groups:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    for i, (base, group) in enumerate(groups.items()):
        ax = axes[i // ncols][i % ncols]
        cmap = matplotlib.colormaps[_FAMILIES[i % len(_FAMILIES)]]
        for r in sorted(group, key=lambda r: list(_VARIANTS).index(_variant(r["name"]))):
            _alpha_series(ax, r, cmap)
        ax.set_title(base)
        ax.set_xlabel("α")
        ax.set_ylabel("mean validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for j in range(len(groups), nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    fig.suptitle("Choosing α on validation data (★ chosen α; shading: range widened beyond the initial grid)")
    fig.tight_layout()
    return fig


def _alpha_series(ax, row: dict[str, Any], cmap) -> None:
    search = row["alpha_search"]
    shade, style, marker = _VARIANTS[_variant(row["name"])]
    colour = cmap(shade)
    curve = {float(a): float(s) for a, s in (search.get("curve") or {}).items()}
    xs = sorted(curve)
    label = f"{row['name']} ({len(xs)} evals{', at limit' if search.get('at_limit') else ''})"
    ax.plot(xs, [100 * curve[a] for a in xs], linestyle=style, marker=marker, ms=3, color=colour, label=label)
    chosen = search.get("chosen", row.get("alpha"))
    if chosen is not None and float(chosen) in curve:
        ax.plot([float(chosen)], [100 * curve[float(chosen)]], marker="*", ms=13, color=colour,
                markeredgecolor="black", markeredgewidth=0.6, linestyle="none")
    grid, searched = search.get("grid"), search.get("range")
    if search.get("widened") and grid and searched:
        g_lo, g_hi = min(map(float, grid)), max(map(float, grid))
        s_lo, s_hi = float(searched[0]), float(searched[1])
        for lo, hi in ((s_lo, g_lo), (g_hi, s_hi)):
            if hi > lo:
                ax.axvspan(lo, hi, color=colour, alpha=0.12, linewidth=0)


def _intrusion_by_layer(run_dir: Path, merged: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Layer -> (E_in before, E_in after) from the first PACT merge's diagnostics file."""
    for r in merged:
        rel = r.get("diagnostics_file")
        if not r["name"].startswith("pact+") or not rel or not (run_dir / rel).is_file():
            continue
        pact = json.loads((run_dir / rel).read_text()).get("pact") or {}
        per_layer = pact.get("layers") or {}
        return {
            layer: (float(v["E_in_before"]), float(v["E_in_after"]))
            for layer, v in per_layer.items()
            if "E_in_before" in v and "E_in_after" in v
        }
    return {}
