"""α selection: coarse-to-fine finds the grid optimum of unimodal curves with fewer evaluations."""

import numpy as np
import pytest

from pactmerge.pipeline.merge_stage import search_alpha

GRID = [round(0.1 * i, 1) for i in range(21)]  # 0.0 .. 2.0, the specification's default


@pytest.mark.parametrize("peak", [0.0, 0.3, 0.7, 1.15, 1.6, 2.0])
def test_coarse_to_fine_matches_full_grid_on_unimodal_curves(peak):
    calls = []

    def score(a):
        calls.append(a)
        return -abs(a - peak)

    full = search_alpha(lambda a: -abs(a - peak), GRID, "grid")
    fast = search_alpha(score, GRID, "coarse_to_fine")
    assert fast.best_alpha == full.best_alpha
    assert fast.evaluations == len(calls) == len(set(calls))
    assert fast.evaluations < len(GRID)
    assert full.evaluations == len(GRID)


def test_ties_go_to_the_smaller_alpha():
    res = search_alpha(lambda a: 1.0, GRID, "grid")
    assert res.best_alpha == 0.0


def test_fixed_mode_evaluates_once():
    res = search_alpha(lambda a: a, GRID, "fixed", fixed=0.3)
    assert res.best_alpha == 0.3 and res.evaluations == 1


def test_curve_is_recorded_sorted():
    rng = np.random.default_rng(0)
    vals = {a: float(rng.random()) for a in GRID}
    res = search_alpha(vals.__getitem__, GRID, "grid")
    assert list(res.curve) == sorted(res.curve)
    assert res.best_score == max(vals.values())
