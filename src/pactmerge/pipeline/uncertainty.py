"""Bootstrap intervals over test examples: a model's average accuracy and a paired gain.

The average accuracy of a model is the mean over tasks of its per-task top-1 accuracy. Its
sampling uncertainty comes from the finite test splits, so each of ``resamples`` bootstrap
replicates draws, within every task separately (stratified by task), as many test examples as
the split holds, with replacement, and recomputes the average. Every model of one call sees
the *same* drawn indices, so the difference of two models on one replicate is a paired
difference: the examples both get right or both get wrong cancel, and a gain's interval is
much narrower than the two models' own intervals suggest.

Intervals are percentile intervals (the 2.5th and 97.5th percentiles of the replicates for
``level=0.95``). The indices are drawn by ``numpy.random.default_rng`` from a seed derived from
``(seed, task name)``, so a given task's resamples do not depend on which other tasks or
models are in the call, nor on their order.

Pure numpy: ``correct`` arrays are boolean (or 0/1) vectors, one per task, in split order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from pactmerge.errors import StageError

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
_CHUNK_ELEMENTS = 1 << 22  # drawn indices held at once (resamples x examples), about 32 MB of int64


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile interval (all in [0, 1] for accuracies)."""

    mean: float
    lo: float
    hi: float

    def as_list(self) -> list[float]:
        return [self.lo, self.hi]

    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def correctness(predictions: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{task: (pred, label)}`` -> ``{task: bool vector pred == label}``; shapes must agree."""
    out = {}
    for task, (pred, label) in predictions.items():
        pred, label = np.asarray(pred).ravel(), np.asarray(label).ravel()
        if pred.shape != label.shape:
            raise StageError(f"task {task!r}: {pred.size} predictions for {label.size} labels; "
                             "re-run the evaluation stage to rewrite the predictions file")
        out[task] = pred == label
    return out


def task_seed(seed: int, task: str) -> np.random.SeedSequence:
    """The seed sequence of one task's resamples: ``(seed, sha256(task))``."""
    digest = int.from_bytes(hashlib.sha256(task.encode()).digest()[:8], "little")
    return np.random.SeedSequence([int(seed), digest])


def _task_sizes(models: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for name, per_task in models.items():
        for task, c in per_task.items():
            n = int(np.asarray(c).size)
            if n == 0:
                raise StageError(f"model {name!r}, task {task!r}: no test predictions")
            if sizes.setdefault(task, n) != n:
                raise StageError(f"task {task!r}: model {name!r} has {n} test predictions, another model "
                                 f"{sizes[task]}; models compared must be evaluated on the same test split "
                                 "(re-run the evaluation stage)")
    return sizes


def bootstrap_task_accuracies(models: Mapping[str, Mapping[str, np.ndarray]], *, resamples: int = RESAMPLES,
                              seed: int = SEED) -> dict[str, dict[str, np.ndarray]]:
    """``{model: {task: correct}}`` -> ``{model: {task: (resamples,) accuracy per replicate}}``.

    Every model must hold the same tasks and, per task, the same number of examples; all models
    share each replicate's drawn indices (paired). ``correct`` may be fractional (a mean of 0/1
    vectors, e.g. over seed replicates): a replicate's accuracy is its weighted mean.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not models:
        return {}
    names = list(models)
    tasks = sorted(models[names[0]])
    for name in names:
        if sorted(models[name]) != tasks:
            raise StageError(f"model {name!r} has predictions for {sorted(models[name])}, another for {tasks}; "
                             "bootstrap models over the same tasks")
    sizes = _task_sizes(models)
    out: dict[str, dict[str, np.ndarray]] = {name: {} for name in names}
    for task in tasks:
        n = sizes[task]
        correct = np.stack([np.asarray(models[m][task], dtype=np.float64).ravel() for m in names])  # (M, n)
        acc = np.empty((len(names), resamples))
        rng = np.random.default_rng(task_seed(seed, task))
        chunk = max(1, _CHUNK_ELEMENTS // n)
        for start in range(0, resamples, chunk):
            b = min(chunk, resamples - start)
            idx = rng.integers(0, n, size=(b, n))  # (b, n) drawn example indices
            counts = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
            acc[:, start:start + b] = correct @ counts.T / n  # (M, b); exact for 0/1 correct (integer sums)
        for i, name in enumerate(names):
            out[name][task] = acc[i]
    return out


def bootstrap_averages(models: Mapping[str, Mapping[str, np.ndarray]], *, resamples: int = RESAMPLES,
                       seed: int = SEED) -> dict[str, np.ndarray]:
    """``{model: {task: correct}}`` -> ``{model: (resamples,) average accuracy per replicate}``
    (the mean over tasks of ``bootstrap_task_accuracies``)."""
    per_task = bootstrap_task_accuracies(models, resamples=resamples, seed=seed)
    return {m: np.mean(np.stack([acc[t] for t in sorted(acc)]), axis=0) for m, acc in per_task.items()}


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of ``samples``."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(np.asarray(samples, dtype=np.float64), [tail, 100 - tail])
    return float(lo), float(hi)


def average_accuracy(correct: Mapping[str, np.ndarray]) -> float:
    """Mean over tasks of per-task accuracy."""
    return float(np.mean([np.asarray(c, dtype=np.float64).mean() for c in correct.values()]))


@dataclass(frozen=True)
class Intervals:
    """``average[model]``, ``per_task[model][task]`` and ``gains[model]`` (vs its reference)."""

    average: dict[str, Interval]
    per_task: dict[str, dict[str, Interval]]
    gains: dict[str, Interval]


def intervals(models: Mapping[str, Mapping[str, np.ndarray]], pairs: Mapping[str, str] | None = None, *,
              resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Intervals:
    """Average-accuracy and per-task intervals per model, and a paired gain per ``pairs`` entry.

    ``pairs`` maps a model to the model it is compared with (``{"pact+ties": "ties"}``); the
    gain is ``model - reference`` in average accuracy, its interval from the same replicates.
    Pairs naming a model not in ``models`` are skipped.
    """
    per_task = bootstrap_task_accuracies(models, resamples=resamples, seed=seed)
    samples = {m: np.mean(np.stack([acc[t] for t in sorted(acc)]), axis=0) for m, acc in per_task.items()}
    point = {m: average_accuracy(models[m]) for m in models}
    avg = {m: Interval(point[m], *percentile_interval(samples[m], level)) for m in models}
    tasks = {m: {t: Interval(float(np.mean(np.asarray(models[m][t], dtype=np.float64))),
                             *percentile_interval(acc[t], level)) for t in acc} for m, acc in per_task.items()}
    gains = {}
    for m, ref in (pairs or {}).items():
        if m in samples and ref in samples:
            gains[m] = Interval(point[m] - point[ref], *percentile_interval(samples[m] - samples[ref], level))
    return Intervals(avg, tasks, gains)
