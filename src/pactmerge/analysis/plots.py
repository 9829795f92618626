"""PNG figures of the LBW report: heatmaps of Sim / Inf, intrusion energy per layer and
component, and perturbation curves. matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pactmerge.figures import pyplot, save_png


def heatmap(matrix: list[list[float]], tasks: list[str], title: str, path: Path, *, vmax: float | None = None) -> Path:
    """A T×T heatmap with the values written in the cells; rows and columns are ``tasks``."""
    plt = pyplot()
    n = len(tasks)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    im = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=vmax)
    lo, hi = im.get_clim()
    mid = lo + 0.6 * (hi - lo)  # dark text on the bright end of viridis, white on the dark end
    ax.set_xticks(range(n), tasks, rotation=45, ha="right")
    ax.set_yticks(range(n), tasks)
    for i in range(n):
        for j in range(n):
            color = "k" if matrix[i][j] > mid else "w"
            ax.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center", color=color, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_png(fig, path)


def intrusion_plot(by_group: Mapping[str, Mapping[str, Mapping[str, float]]], title: str, xlabel: str, path: Path) -> Path:
    """E_in per group (layer or component) for every task, before (solid) and after PACT (dashed)."""
    plt = pyplot()
    groups = list(by_group)
    tasks = list(next(iter(by_group.values()))) if groups else []
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(groups) + 2), 3.6))
    for i, t in enumerate(tasks):
        color = f"C{i % 10}"
        ax.plot(groups, [by_group[g][t]["before"] for g in groups], "-o", color=color, ms=3, label=f"{t}")
        if "after" in by_group[groups[0]][t]:
            ax.plot(groups, [by_group[g][t]["after"] for g in groups], "--x", color=color, ms=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("intrusion energy E_in")
    ax.set_title(title + " (solid: before PACT, dashed: after)", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, ncol=2)
    return save_png(fig, path)


def perturbation_plot(curves: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Accuracy against noise strength per task: LBW mask (solid) vs random mask (dashed)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (t, c) in enumerate(curves.items()):
        color = f"C{i % 10}"
        ax.plot(c["strengths"], c["lbw"], "-o", color=color, ms=3, label=f"{t} (LBW mask)")
        ax.plot(c["strengths"], c["random"], "--x", color=color, ms=3, label=f"{t} (random mask)")
    ax.set_xlabel("relative noise strength s")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("noise on the pre-trained weights each task kept", fontsize=9)
    ax.legend(fontsize=7)
    return save_png(fig, path)


def report_figures(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Every figure of an ``analyze_states`` report (plus ``perturbation`` when present) in ``out_dir``."""
    out_dir = Path(out_dir)
    tasks = list(report["tasks"])
    paths = []
    intr = report["intrusion"]
    paths.append(intrusion_plot(intr["by_layer"], "intrusion energy per layer", "transformer block", out_dir / "intrusion_by_layer.png"))
    paths.append(intrusion_plot(intr["by_component"], "intrusion energy per component", "component", out_dir / "intrusion_by_component.png"))
    if len(tasks) > 1:
        for view in ("all", "most_affected"):
            paths.append(heatmap(report["similarity"][view], tasks, f"task-core similarity Sim(i, j), {view} keys",
                                 out_dir / f"similarity_{view}.png", vmax=1.0))
            for phase, inf in report["interference"].items():
                paths.append(heatmap(inf[view], tasks, f"interference Inf(i, j) {phase} PACT, {view} keys\n"
                                     "(row i: reliance space, column j: update)", out_dir / f"interference_{phase}_{view}.png"))
    if report.get("perturbation"):
        paths.append(perturbation_plot(report["perturbation"], out_dir / "perturbation.png"))
    return paths
