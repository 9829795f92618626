"""The split rule.

Unless the source has an official validation split: validation = a seeded ``val_fraction`` of the
official train split (at most ``max_val`` images), training = the rest, test = the official test
split, untouched. With an official validation split, training = all of train and validation = that
split (capped at ``max_val``). Optional caps (``max_train``, ``max_eval``) then keep a seeded subset.
Train and validation are complementary index sets of one source split and test is another source
split, so no validation or test image is in training (as far as the source's own splits are disjoint).
"""

from __future__ import annotations

import numpy as np

from pactmerge.datamodules.sources import SourceSpec
from pactmerge.errors import DataError

ROLES = ("train", "val", "test")
_STREAM = {"carve": 0, "train": 1, "val": 2, "test": 3}


def _cap(idx: np.ndarray, cap: int | None, seed: int, role: str) -> np.ndarray:
    if cap is None or len(idx) <= cap:
        return idx
    rng = np.random.default_rng([seed, _STREAM[role]])
    return np.sort(rng.choice(idx, size=cap, replace=False))


def plan_splits(sizes: dict[str, int], spec: SourceSpec, *, seed: int, val_fraction: float, max_val: int,
                max_train: int | None, max_eval: int | None, where: str) -> dict[str, tuple[str, np.ndarray]]:
    """``{role: (source split name, sorted int64 indices)}`` for roles train/val/test."""
    for split in (spec.train_split, spec.test_split, spec.val_split):
        if split is not None and split not in sizes:
            raise DataError(
                f"{where}: source {spec.describe()} has no split {split!r}; it has {sorted(sizes)}. "
                "Name the split folders/files train, test (and validation)."
            )
    n_train = sizes[spec.train_split]
    if spec.val_split is not None:
        train = np.arange(n_train, dtype=np.int64)
        val = _cap(np.arange(sizes[spec.val_split], dtype=np.int64), max_val, seed, "carve")
        val_split = spec.val_split
    else:
        n_val = min(int(round(val_fraction * n_train)), max_val)
        perm = np.random.default_rng([seed, _STREAM["carve"]]).permutation(n_train)
        val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        val_split = spec.train_split
    test = np.arange(sizes[spec.test_split], dtype=np.int64)
    return {
        "train": (spec.train_split, _cap(train, max_train, seed, "train")),
        "val": (val_split, _cap(val, max_eval, seed, "val")),
        "test": (spec.test_split, _cap(test, max_eval, seed, "test")),
    }
