"""PNG plots of a study (matplotlib, Agg backend): per-task accuracy by model, validation
accuracy against α per merge, joint vs sequential vs the best merge, and PACT's intrusion
energy per layer before and after cleaning."""

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
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks) + 2), 4.5))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        xs = [j + i * width for j in range(len(tasks))]
        ax.bar(xs, [100 * r["accuracy"].get(t, 0) for t in tasks], width, label=r["name"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks)
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title("Per-task accuracy by model")
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    out["per_task"] = save_png(fig, plot_dir / "per_task_accuracy.png")

    # 2. validation accuracy against alpha, one curve per merge
    merged = [r for r in rows if r["kind"] == "merged" and r.get("alpha_search")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in merged:
        curve = {float(a): s for a, s in r["alpha_search"]["curve"].items()}
        xs = sorted(curve)
        ax.plot(xs, [100 * curve[a] for a in xs], marker="o", ms=3, label=f"{r['name']} ({len(xs)} evals)")
    ax.set_xlabel("α")
    ax.set_ylabel("mean validation accuracy (%)")
    ax.set_title("Choosing α on validation data")
    ax.legend(fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
    out["alpha"] = save_png(fig, plot_dir / "alpha_curves.png")

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
