"""Choosing a merge's scaling coefficient α: a search over a score function, widened at the edges.

Pure Python: ``search_alpha(score, grid, mode, bounds=...)`` calls ``score(alpha)`` (in a study,
the mean validation accuracy of ``θ0 + α τ``) and never imports torch.

The search runs on a lattice of step ``resolution`` (the grid's own step, at most
``FINE_STEP`` = 0.05 for ``coarse_to_fine``) over a range that starts as the grid's
``[min, max]``:

1. **Coarse** (``coarse_to_fine``): about five evenly spaced lattice points of the range, both
   ends included. ``grid`` evaluates every grid point instead.
2. **Refinement**: a bracketed search on the lattice. The best point and its nearest evaluated
   neighbours bracket a maximum; the midpoint of the wider unexplored gap next to the best point
   is evaluated, until both lattice neighbours of the best point are evaluated. On a unimodal
   curve this finds the lattice maximum with about 2 log2(gap) evaluations instead of the
   whole lattice (``grid`` mode has nothing left to refine).
3. **Widening**: when the refined best point is an end of the searched range and that end is
   not the method's hard bound (``MethodSpec.alpha_bounds``), the range grows on that side by
   its initial span (never past the bound), the new part is searched as in 1, and 2 and 3
   repeat.
4. **Probing beyond**: when the best point is interior but the range stops below the upper
   hard bound, the next span above it is evaluated at the coarse spacing of 1. A point there
   that beats the best widens the range to include it and 2-4 repeat; otherwise the range stays
   (the probed points stay in the curve). Curves after PACT often dip and rise again: on the
   offline default's fine-tunes the earlier rule (no probing, 4 confirmation intervals) chose an
   α more than 0.3 points below the best of the hard range for 8 of 27 merges (up to 5.3
   points), this one for 3 (up to 1.5), for 16% more validation images
   (``benchmarks/alpha_replay.py``; ``docs/merging.md``).

Ties go to the smaller α. The chosen α is ``at_limit`` when it lies on a hard bound after
widening, that is, the curve still rose towards a limit the method does not allow crossing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

FINE_STEP = 0.05  # the finest α resolution of the default search
COARSE_POINTS = 4  # coarse intervals over the initial range
MODES = ("coarse_to_fine", "grid", "fixed")
PLATEAU = 0.03  # first-pass scores within this of the first pass's best span the region that is confirmed
CONFIRM_SPACING = 6  # that region is confirmed at about this many evenly spaced intervals before the climb
CLIMB_STEPS = (-2, -1, 0, 1, 2)  # lattice steps the confirming climb looks at around its point


@dataclass
class AlphaSearch:
    """One α search: its curve (α -> score, every evaluation), the choice and how the range moved."""

    chosen: float
    score: float
    curve: dict[float, float]
    grid: list[float]
    range: tuple[float, float]
    hard_bounds: tuple[float, float]
    mode: str
    widened: bool = False
    at_limit: bool = False
    resolution: float | None = None
    confirmed: dict[float, float] = field(default_factory=dict)  # α -> ``score`` where a first pass searched

    @property
    def evaluations(self) -> int:
        return len(self.curve)

    def record(self) -> dict[str, Any]:
        """The JSON form kept with the merge (``alpha_search`` in ``results.json``)."""
        return {"mode": self.mode, "grid": list(self.grid), "range": list(self.range), "widened": self.widened,
                "at_limit": self.at_limit, "curve": {_key(a): s for a, s in sorted(self.curve.items())},
                "chosen": self.chosen, "score": self.score, "hard_bounds": list(self.hard_bounds),
                "evaluations": self.evaluations, "resolution": self.resolution,
                "confirmed": {_key(a): s for a, s in sorted(self.confirmed.items())}}


def _key(alpha: float) -> str:
    return repr(round(float(alpha), 6))


def argmax(curve: dict[float, float]) -> float:
    """The α of the highest score; ties go to the smaller α."""
    return max(sorted(curve), key=lambda a: (curve[a], -a))


@dataclass
class _Lattice:
    """α = ``unit * step`` for integer units; the search state on it."""

    step: float
    score: Callable[[float], float]
    curve: dict[int, float] = field(default_factory=dict)

    def alpha(self, u: int) -> float:
        return round(u * self.step, 6)

    def visit(self, units: Sequence[int]) -> None:
        for u in units:
            if u not in self.curve:
                self.curve[u] = float(self.score(self.alpha(u)))

    def best(self, lo: int, hi: int) -> int:
        inside = {u: s for u, s in self.curve.items() if lo <= u <= hi}
        return max(sorted(inside), key=lambda u: (inside[u], -u))


def _spaced(start: int, stop: int, every: int) -> list[int]:
    """``start, start + every, ...`` up to ``stop``, ``stop`` included (either direction)."""
    sign = 1 if stop >= start else -1
    pts = list(range(start, stop, sign * max(1, every)))
    return pts + [stop]


def search_alpha(score: Callable[[float], float], grid: Sequence[float], mode: str = "coarse_to_fine", *,
                 bounds: tuple[float, float] | None = None, fixed: float | None = None,
                 resolution: float | None = None, first_pass: Callable[[float], float] | None = None
                 ) -> AlphaSearch:
    """Maximise ``score(alpha)`` starting from ``grid`` (see the module docstring).

    ``bounds``: the hard limits of widening (default: the grid's range, i.e. no widening);
    ``fixed``: the α of ``fixed`` mode (default: the grid's single point or its first);
    ``resolution``: the lattice step (default: the grid's smallest gap, at most ``FINE_STEP`` in
    ``coarse_to_fine`` mode). A single-point grid is searched as ``fixed``.

    ``first_pass``: a cheaper, noisier estimate of ``score`` (a subset of the validation data).
    Steps 1-4 then run on it, and ``score`` confirms. A subset's curve is flat and noisy near
    its top and its best point can sit anywhere on that plateau, so the confirmation spans it:
    the first-pass points within ``PLATEAU`` of the first pass's best give a region, which is
    re-scored at about ``CONFIRM_SPACING`` evenly spaced intervals (ends and the first pass's
    best included); then a climb on the lattice from the best of them (1 and 2 steps either
    side, past the searched range up to the hard bounds) until no such point scores higher
    (``confirmed``; the chosen α and its score come from it). ``first_pass`` is also asked for
    every confirmed point, so the curve holds them all (a caller scoring both from one evaluation
    pays nothing).
    """
    if mode not in MODES:
        raise ValueError(f"unknown alpha search mode {mode!r}; use {', '.join(MODES)}")
    grid = sorted({round(float(a), 6) for a in grid})
    if not grid:
        raise ValueError("empty alpha grid")
    lo_b, hi_b = (grid[0], grid[-1]) if bounds is None else (float(bounds[0]), float(bounds[1]))
    if lo_b > grid[0] or hi_b < grid[-1]:
        lo_b, hi_b = min(lo_b, grid[0]), max(hi_b, grid[-1])  # the grid is always searchable
    if mode == "fixed" or len(grid) == 1:
        a = round(float(grid[0] if fixed is None else fixed), 6)
        s = float(score(a))
        return AlphaSearch(a, s, {a: s}, grid, (a, a), (lo_b, hi_b), "fixed")
    search_fn, confirm_fn = (first_pass, score) if first_pass is not None else (score, None)
    gaps = [b - a for a, b in zip(grid, grid[1:])]
    step = round(resolution or (min(gaps) if mode == "grid" else min(min(gaps), FINE_STEP)), 10)
    lat = _Lattice(step, search_fn)
    unit = lambda a: int(round(a / step))  # noqa: E731
    lo, hi = unit(grid[0]), unit(grid[-1])
    lo_bound, hi_bound = math.ceil(lo_b / step - 1e-9), math.floor(hi_b / step + 1e-9)
    span = hi - lo
    every = 1 if mode == "grid" else max(1, round(span / COARSE_POINTS))
    if mode == "grid":
        lat.visit([unit(a) for a in grid])
    else:
        lat.visit(_spaced(lo, hi, every))
    def visit_beyond(edge: int, bound: int) -> int:
        """Visit the next span past ``edge`` towards ``bound`` (never past it) at the coarse spacing;
        returns that span's far end."""
        far = min(bound, edge + span) if bound > edge else max(bound, edge - span)
        lat.visit(_spaced(edge + (every if far > edge else -every), far, every) if abs(far - edge) > every else [far])
        return far

    widened, probed = False, False
    while True:
        b = lat.best(lo, hi)
        left = max((u for u in lat.curve if lo <= u < b), default=b)
        right = min((u for u in lat.curve if b < u <= hi), default=b)
        gap_left, gap_right = b - left - 1, right - b - 1
        if max(gap_left, gap_right) > 0:
            lat.visit([(left + b) // 2 if gap_left >= gap_right else (b + right + 1) // 2])
        elif b == hi and hi < hi_bound:  # 3: widen upwards
            hi, widened = visit_beyond(hi, hi_bound), True
        elif b == lo and lo > lo_bound:  # 3: widen downwards
            lo, widened = visit_beyond(lo, lo_bound), True
        elif hi < hi_bound and not probed:  # 4: probe the next span above
            far = visit_beyond(hi, hi_bound)
            if lat.curve[lat.best(lo, far)] > lat.curve[b]:
                hi, widened = far, True
            else:
                probed = True
        else:
            break
    confirmed: dict[int, float] = {}
    if confirm_fn is not None:
        inside = {u: v for u, v in lat.curve.items() if lo <= u <= hi}
        top = max(inside.values())
        plateau = sorted(u for u, v in inside.items() if v >= top - PLATEAU)
        first, last = plateau[0], plateau[-1]
        every = max(1, -(-(last - first) // CONFIRM_SPACING))
        for u in sorted(set(range(first, last + 1, every)) | {last, lat.best(lo, hi)}):
            confirmed[u] = float(confirm_fn(lat.alpha(u)))
            lat.visit([u])
        b = max(sorted(confirmed), key=lambda u: (confirmed[u], -u))
        while True:
            near = [b + d for d in CLIMB_STEPS if lo_bound <= b + d <= hi_bound]
            for u in near:
                if u not in confirmed:
                    confirmed[u] = float(confirm_fn(lat.alpha(u)))
                    lat.visit([u])
            nxt = max(sorted(near), key=lambda u: (confirmed[u], -u))
            if nxt == b:
                break
            b = nxt
        if min(confirmed) < lo or max(confirmed) > hi:
            lo, hi, widened = min(lo, min(confirmed)), max(hi, max(confirmed)), True
        best_score = confirmed[b]
    else:
        b = lat.best(lo, hi)
        best_score = lat.curve[b]
    at_limit = (b == hi == hi_bound) or (b == lo == lo_bound)
    curve = {lat.alpha(u): s for u, s in sorted(lat.curve.items())}
    return AlphaSearch(lat.alpha(b), best_score, curve, grid, (lat.alpha(lo), lat.alpha(hi)),
                       (lo_b, hi_b), mode, widened=widened, at_limit=at_limit, resolution=step,
                       confirmed={lat.alpha(u): s for u, s in sorted(confirmed.items())})
