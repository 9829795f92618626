"""Bootstrap intervals over test examples (pipeline.uncertainty): hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from pactmerge.errors import StageError
from pactmerge.pipeline.uncertainty import (
    Interval,
    average_accuracy,
    bootstrap_averages,
    bootstrap_task_accuracies,
    correctness,
    intervals,
    percentile_interval,
)


def _correct(n: int, k: int) -> np.ndarray:
    """n examples, the first k right."""
    return np.arange(n) < k


def test_identical_predictions_give_gain_zero_with_interval_zero():
    rng = np.random.default_rng(1)
    per_task = {"a": rng.random(120) < 0.7, "b": rng.random(80) < 0.4}
    models = {"ties": per_task, "pact+ties": {t: c.copy() for t, c in per_task.items()}}
    res = intervals(models, {"pact+ties": "ties"}, resamples=300)
    avg, gains = res.average, res.gains
    g = gains["pact+ties"]
    assert (g.mean, g.lo, g.hi) == (0.0, 0.0, 0.0)
    assert avg["ties"] == avg["pact+ties"]
    assert avg["ties"].lo < avg["ties"].mean < avg["ties"].hi


def test_paired_gain_excludes_zero_when_one_model_is_never_worse():
    # 200 examples: both right on the first 100, only the second model on the next 20.
    # Every replicate's gain is (discordant examples drawn) / 200 >= 0, and the chance of drawing
    # none of the 20 is (180/200)^200 ~ 7e-10, so the interval sits strictly above 0.
    plain, better = _correct(200, 100), _correct(200, 120)
    res = intervals({"x": {"t": plain}, "pact+x": {"t": better}}, {"pact+x": "x"}, resamples=500, seed=3)
    avg, gains = res.average, res.gains
    g = gains["pact+x"]
    assert g.mean == pytest.approx(0.1)
    assert 0 < g.lo < g.mean < g.hi
    # gain se = sqrt(p(1-p)/n) with p = 0.1 discordant: 0.0212; the interval is about ±1.96 se
    assert g.hi - g.lo == pytest.approx(2 * 1.96 * np.sqrt(0.1 * 0.9 / 200), rel=0.2)
    # the unpaired intervals overlap although the paired gain is clearly positive
    assert avg["pact+x"].lo < avg["x"].hi


def test_same_seed_same_intervals_other_seed_other_draws():
    models = {"m": {"a": _correct(50, 30), "b": _correct(70, 20)}}
    s1 = bootstrap_averages(models, resamples=200, seed=7)["m"]
    s2 = bootstrap_averages(models, resamples=200, seed=7)["m"]
    s3 = bootstrap_averages(models, resamples=200, seed=8)["m"]
    np.testing.assert_array_equal(s1, s2)
    assert not np.array_equal(s1, s3)


def test_a_tasks_resamples_do_not_depend_on_the_other_tasks_or_models():
    a = _correct(60, 45)
    alone = bootstrap_averages({"m": {"a": a}}, resamples=100, seed=0)["m"]
    # with a second task of constant accuracy 1.0, the average is (acc_a + 1) / 2 on every replicate
    with_b = bootstrap_averages({"z": {"b": np.ones(9, bool), "a": a}, "m": {"a": a, "b": np.ones(9, bool)}},
                                resamples=100, seed=0)
    np.testing.assert_allclose(with_b["m"], (alone + 1) / 2)
    np.testing.assert_array_equal(with_b["m"], with_b["z"])


def test_known_variance_of_a_stratified_average():
    # task a: p = 0.5 on 400 examples; task b: p = 0.8 on 100 examples.
    # var(avg) = (0.25/400 + 0.16/100) / 4 = 5.5625e-4, se = 0.02358
    models = {"m": {"a": _correct(400, 200), "b": _correct(100, 80)}}
    samples = bootstrap_averages(models, resamples=4000, seed=11)["m"]
    se = np.sqrt((0.25 / 400 + 0.16 / 100) / 4)
    assert samples.std() == pytest.approx(se, rel=0.06)
    assert samples.mean() == pytest.approx(0.65, abs=0.002)
    lo, hi = percentile_interval(samples)
    assert lo == pytest.approx(0.65 - 1.96 * se, abs=0.006)
    assert hi == pytest.approx(0.65 + 1.96 * se, abs=0.006)


def test_percentile_interval_on_known_samples():
    assert percentile_interval(np.arange(101), level=0.9) == pytest.approx((5.0, 95.0))
    with pytest.raises(ValueError, match="level"):
        percentile_interval(np.arange(3), level=1.5)


def test_correctness_and_average():
    preds = {"a": (np.array([1, 2, 3, 4], np.int16), np.array([1, 2, 0, 0], np.int16)),
             "b": (np.array([5, 5], np.int16), np.array([5, 5], np.int16))}
    c = correctness(preds)
    assert c["a"].tolist() == [True, True, False, False]
    assert average_accuracy(c) == pytest.approx(0.75)  # (0.5 + 1.0) / 2, not 4/6
    with pytest.raises(StageError, match="3 predictions for 2 labels"):
        correctness({"a": (np.zeros(3), np.zeros(2))})


def test_models_on_different_splits_are_refused():
    with pytest.raises(StageError, match="same test split"):
        bootstrap_averages({"x": {"t": np.ones(10, bool)}, "y": {"t": np.ones(11, bool)}}, resamples=5)
    with pytest.raises(StageError, match="same tasks"):
        bootstrap_averages({"x": {"t": np.ones(10, bool)}, "y": {"u": np.ones(10, bool)}}, resamples=5)


def test_large_splits_are_drawn_in_chunks_with_the_same_result(monkeypatch):
    import pactmerge.pipeline.uncertainty as unc

    models = {"m": {"a": _correct(500, 321)}}
    whole = bootstrap_averages(models, resamples=64, seed=2)["m"]
    monkeypatch.setattr(unc, "_CHUNK_ELEMENTS", 500 * 5)  # 5 replicates per chunk
    np.testing.assert_array_equal(bootstrap_averages(models, resamples=64, seed=2)["m"], whole)


def test_per_task_intervals_are_the_single_task_bootstrap_and_average_to_the_average():
    models = {"m": {"a": _correct(90, 60), "b": _correct(40, 10)}, "n": {"a": _correct(90, 30), "b": _correct(40, 40)}}
    res = intervals(models, resamples=200, seed=5)
    alone = intervals({"m": {"a": models["m"]["a"]}}, resamples=200, seed=5)
    assert res.per_task["m"]["a"] == alone.average["m"]
    assert res.per_task["n"]["b"] == Interval(1.0, 1.0, 1.0)
    assert res.average["m"].mean == pytest.approx((60 / 90 + 10 / 40) / 2)
    per_task = bootstrap_task_accuracies(models, resamples=200, seed=5)
    np.testing.assert_allclose(bootstrap_averages(models, resamples=200, seed=5)["m"],
                               (per_task["m"]["a"] + per_task["m"]["b"]) / 2)
