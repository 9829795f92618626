"""α search (``pipeline.alpha``) on hand-made score curves: the lattice maximum of unimodal curves
with fewer evaluations than the lattice, widening when the best α is on an edge, ``at_limit`` at
a hard bound, ties to the smaller α, and the record the report reads."""

import numpy as np
import pytest

from pactmerge.pipeline.alpha import search_alpha

GRID = [round(0.1 * i, 1) for i in range(21)]  # 0.0 .. 2.0, the specification's default
TA_GRID = [round(0.05 * i, 2) for i in range(1, 21)]  # 0.05 .. 1.0 (Task Arithmetic, TIES)


def _counted(fn):
    calls = []

    def score(a):
        calls.append(a)
        return fn(a)

    return score, calls


@pytest.mark.parametrize("peak", [0.3, 0.7, 1.15, 1.6, 1.85])
def test_unimodal_interior_peak_is_found_on_the_005_lattice_with_few_evaluations(peak):
    score, calls = _counted(lambda a: -abs(a - peak))
    res = search_alpha(score, GRID, "coarse_to_fine", bounds=(0.0, 4.0))
    assert res.chosen == peak and res.score == pytest.approx(0.0, abs=1e-12)
    assert not res.widened and not res.at_limit and res.range == (0.0, 2.0)
    # the 0.05 lattice holds 41 points; the next span up to the bound is probed at the coarse spacing
    assert {2.5, 3.0, 3.5, 4.0} <= set(calls) and max(calls) == 4.0
    assert res.evaluations == len(calls) == len(set(calls)) <= 17
    assert res.chosen in res.curve


def test_peak_beyond_the_upper_edge_widens_until_it_is_interior():
    score, calls = _counted(lambda a: -(a - 2.7) ** 2)
    res = search_alpha(score, GRID, "coarse_to_fine", bounds=(0.0, 4.0))
    assert res.widened and not res.at_limit
    assert res.chosen == 2.7
    lo, hi = res.range
    assert lo == 0.0 and 2.7 < hi <= 4.0
    assert max(res.curve) == hi and res.curve[hi] < res.score  # the new edge is worse: the best is interior
    rec = res.record()
    assert rec["grid"] == GRID and rec["range"] == [lo, hi] and rec["hard_bounds"] == [0.0, 4.0]
    assert rec["widened"] is True and rec["at_limit"] is False and rec["chosen"] == 2.7
    assert rec["curve"]["2.7"] == 0.0 and rec["evaluations"] == len(rec["curve"]) == len(calls)


def test_peak_below_the_lower_edge_widens_down_to_the_bound():
    # Task Arithmetic's grid starts at 0.05; a curve peaking at 0.0 widens to the bound 0.0
    res = search_alpha(lambda a: -abs(a - 0.0), TA_GRID, "coarse_to_fine", bounds=(0.0, 3.0))
    assert res.widened and res.range[0] == 0.0 and res.chosen == 0.0
    assert res.at_limit  # still on an edge, and that edge is the method's hard bound


def test_monotone_curve_stops_at_the_hard_bound():
    score, calls = _counted(lambda a: a)
    res = search_alpha(score, GRID, "coarse_to_fine", bounds=(0.0, 4.0))
    assert res.chosen == 4.0 and res.range == (0.0, 4.0)
    assert res.widened and res.at_limit
    assert max(calls) == 4.0  # never evaluated beyond the bound
    # a bound the initial grid already reaches: no widening, at_limit all the same
    res = search_alpha(lambda a: a, GRID, "coarse_to_fine", bounds=(0.0, 2.0))
    assert res.chosen == 2.0 and not res.widened and res.at_limit


def test_a_higher_peak_past_a_dip_above_the_range_is_found_by_probing():
    # a local peak at 1.0 inside the initial range, a dip, and the real peak at 3.1 above it
    fn = lambda a: max(0.5 - abs(a - 1.0), 1.0 - abs(a - 3.1))  # noqa: E731
    res = search_alpha(fn, GRID, "coarse_to_fine", bounds=(0.0, 4.0))
    assert res.chosen == 3.1 and res.widened and not res.at_limit and res.range == (0.0, 4.0)
    # with a first pass: probed on it, then confirmed
    res = search_alpha(fn, GRID, "coarse_to_fine", bounds=(0.0, 4.0), first_pass=fn)
    assert res.chosen == 3.1 and 3.1 in res.confirmed
    # no room above the range: nothing is probed
    score, calls = _counted(fn)
    res = search_alpha(score, GRID, "coarse_to_fine", bounds=(0.0, 2.0))
    assert res.chosen == 1.0 and max(calls) == 2.0


def test_a_probe_that_finds_nothing_better_keeps_the_range():
    score, calls = _counted(lambda a: -abs(a - 1.2))
    res = search_alpha(score, TA_GRID, "coarse_to_fine", bounds=(0.0, 3.0))
    assert res.chosen == 1.2 and res.range[1] < 3.0
    probed = [a for a in calls if a > res.range[1]]
    assert probed and all(res.curve[a] < res.score for a in probed)


def test_grid_mode_widens_with_the_grids_step_and_evaluates_every_point():
    res = search_alpha(lambda a: -abs(round(a * 20) - 47), GRID, "grid", bounds=(0.0, 4.0))  # peak 2.35
    assert res.widened and not res.at_limit and res.range == (0.0, 4.0)
    assert sorted(res.curve) == [round(0.1 * i, 1) for i in range(41)]
    assert res.chosen == 2.3  # 2.3 and 2.4 tie at the grid step: the smaller α


def test_grid_and_coarse_to_fine_agree_on_unimodal_curves():
    rng = np.random.default_rng(0)
    for _ in range(20):
        peak, width = float(rng.uniform(0.0, 2.0)), float(rng.uniform(0.2, 2.0))
        fn = lambda a: -((a - peak) / width) ** 2  # noqa: E731
        fine = search_alpha(fn, GRID, "grid", bounds=(0.0, 2.0), resolution=0.05)
        fast = search_alpha(fn, GRID, "coarse_to_fine", bounds=(0.0, 2.0))
        assert fast.chosen == fine.chosen and fast.evaluations < fine.evaluations


def test_ties_go_to_the_smaller_alpha():
    assert search_alpha(lambda a: 1.0, GRID, "grid").chosen == 0.0
    assert search_alpha(lambda a: 1.0, GRID, "coarse_to_fine", bounds=(0.0, 4.0)).chosen == 0.0


def test_fixed_mode_and_single_point_grids_evaluate_once():
    res = search_alpha(lambda a: a, GRID, "fixed", fixed=0.3)
    assert res.chosen == 0.3 and res.evaluations == 1 and not res.widened and not res.at_limit
    res = search_alpha(lambda a: a, [1.0], "coarse_to_fine", bounds=(1.0, 1.0))
    assert res.chosen == 1.0 and res.evaluations == 1 and res.record()["mode"] == "fixed"


def test_unknown_mode_and_empty_grid_are_refused():
    with pytest.raises(ValueError, match="unknown alpha search mode"):
        search_alpha(lambda a: a, GRID, "golden")
    with pytest.raises(ValueError, match="empty alpha grid"):
        search_alpha(lambda a: a, [], "grid")


def test_a_first_pass_searches_and_the_full_score_confirms_by_a_hill_climb():
    subset, sub_calls = _counted(lambda a: -abs(a - 0.9))  # the noisy estimate peaks at 0.9
    full, full_calls = _counted(lambda a: -abs(a - 0.8))  # the truth: 0.8
    res = search_alpha(full, GRID, "coarse_to_fine", bounds=(0.0, 4.0), first_pass=subset)
    assert res.chosen == 0.8 and res.score == pytest.approx(0.0, abs=1e-12)
    # the subset's plateau re-scored, then a climb (±1, ±2 steps) to 0.8
    assert sorted(res.confirmed) == sorted(full_calls) == sorted(set(full_calls))
    assert {0.75, 0.8, 0.85, 0.9, 0.95} <= set(res.confirmed) and len(full_calls) <= 10
    assert res.chosen in res.curve and res.evaluations == len(sub_calls) == len(res.curve)
    assert not res.widened and not res.at_limit
    rec = res.record()
    assert rec["confirmed"]["0.8"] == rec["score"] and rec["curve"]["0.9"] == 0.0


def test_a_confirming_climb_that_reaches_the_edge_widens_by_its_steps():
    # the first pass sees an interior peak at 1.9, the full score keeps rising to 2.1
    res = search_alpha(lambda a: -abs(a - 2.1), GRID, "coarse_to_fine", bounds=(0.0, 4.0),
                       first_pass=lambda a: -abs(a - 1.9))
    assert res.chosen == 2.1 and res.range[1] > 2.1 and res.widened and not res.at_limit
    assert res.range[1] == max(res.confirmed) <= 2.35  # the climb's own points (4 steps beyond 2.15 at most)


def test_the_confirmation_spans_the_first_passs_plateau():
    # the first pass puts 2.45 first; the full score prefers 2.8, the other end of the first
    # pass's plateau (its points within PLATEAU of its best)
    sub = {2.45: 0.668, 2.5: 0.6641, 2.8: 0.6641}
    full = {2.8: 0.6646, 2.5: 0.6603, 2.45: 0.6598}
    first = lambda a: sub.get(a, 0.6 - abs(a - 2.6) / 10)  # noqa: E731
    score = lambda a: full.get(a, 0.6 - abs(a - 2.6) / 10)  # noqa: E731
    res = search_alpha(score, [round(0.1 * i, 1) for i in range(1, 11)], "coarse_to_fine", bounds=(0.0, 2.8),
                       first_pass=first)
    # the plateau [2.45, 2.8] re-scored at about CONFIRM_SPACING intervals, both ends included
    assert {2.45, 2.55, 2.65, 2.75, 2.8} <= set(res.confirmed)
    assert res.chosen == 2.8 and res.score == 0.6646 and res.at_limit
