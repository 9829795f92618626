"""Choosing the scaling coefficient α on validation data.

The specification's grid is searched either whole (``grid``) or coarse-to-fine: every
``stride``-th grid point first, then the fine points around the best coarse one. On the
unimodal curves merging produces this finds the grid optimum with about half the
evaluations; the evaluated points and their count are part of the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass
class AlphaSearch:
    best_alpha: float
    best_score: float
    curve: dict[float, float] = field(default_factory=dict)  # alpha -> mean validation accuracy

    @property
    def evaluations(self) -> int:
        return len(self.curve)


def search_alpha(
    score: Callable[[float], float],
    grid: Sequence[float],
    mode: str = "coarse_to_fine",
    *,
    stride: int = 4,
    fixed: float | None = None,
) -> AlphaSearch:
    """Maximise ``score(alpha)`` over ``grid``; ties go to the smaller α.

    ``mode``: ``grid`` (every point), ``coarse_to_fine`` (every ``stride``-th point, both
    ends included, then every point between the best coarse point's neighbours), or
    ``fixed`` (only ``fixed``, which defaults to the grid's single point).
    """
    grid = sorted(round(float(a), 6) for a in grid)
    if not grid:
        raise ValueError("empty alpha grid")
    curve: dict[float, float] = {}

    def visit(indices):
        for i in indices:
            a = grid[i]
            if a not in curve:
                curve[a] = float(score(a))

    if mode == "fixed":
        a = grid[0] if fixed is None else round(float(fixed), 6)
        curve[a] = float(score(a))
    elif mode == "grid" or len(grid) <= 2 * stride:
        visit(range(len(grid)))
    elif mode == "coarse_to_fine":
        coarse = list(range(0, len(grid), stride))
        if coarse[-1] != len(grid) - 1:
            coarse.append(len(grid) - 1)
        visit(coarse)
        best_i = grid.index(_argmax(curve))
        pos = coarse.index(best_i)
        lo = coarse[max(pos - 1, 0)]
        hi = coarse[min(pos + 1, len(coarse) - 1)]
        visit(range(lo, hi + 1))
    else:
        raise ValueError(f"unknown alpha search mode {mode!r}; use grid, coarse_to_fine or fixed")
    best = _argmax(curve)
    return AlphaSearch(best_alpha=best, best_score=curve[best], curve=dict(sorted(curve.items())))


def _argmax(curve: dict[float, float]) -> float:
    return max(sorted(curve), key=lambda a: (curve[a], -a))
