"""Small on-the-fly datasets for the datamodule tests (ImageFolder trees and parquet files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pactmerge.datamodules import SourceSpec, TaskInfo

CLASSES = ["red", "green", "blue"]


def unique_image(i: int, size: int = 20) -> np.ndarray:
    """A distinct, textured RGB uint8 image for index ``i`` (its index is written into its pixels)."""
    rng = np.random.default_rng(i)
    img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    img[0, 0] = [i % 256, (i // 256) % 256, 7]
    return img


def make_imagefolder(root: Path, n_train: int = 30, n_test: int = 9, size: int = 20, classes=CLASSES) -> Path:
    """``root/{train,test}/<class>/<i>.png`` with distinct lossless images; image i has label i % len(classes)."""
    k = 0
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            d = root / split / classes[i % len(classes)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(unique_image(k, size)).save(d / f"{k:05d}.png")
            k += 1
    return root


def make_parquet(root: Path, n_train: int = 30, n_test: int = 9, size: int = 20, classes=CLASSES,
                 class_label: bool = True, labels=None) -> Path:
    """``root/{train,test}-00000-of-00001.parquet`` written by ``datasets`` (image + label columns)."""
    import datasets

    root.mkdir(parents=True, exist_ok=True)
    label_feature = datasets.ClassLabel(names=list(classes)) if class_label else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), "label": label_feature})
    k = 0
    for split, n in (("train", n_train), ("test", n_test)):
        imgs = [Image.fromarray(unique_image(k + i, size)) for i in range(n)]
        labs = [(k + i) % len(classes) for i in range(n)] if labels is None else list(labels[split])
        datasets.Dataset.from_dict({"image": imgs, "label": labs}, features=features).to_parquet(
            str(root / f"{split}-00000-of-00001.parquet"))
        k += n
    return root


def toy_task(location: str = "unused", hflip: bool = True) -> TaskInfo:
    return TaskInfo("toy", "Toy colours", list(CLASSES), ["a photo of {}."], (SourceSpec("imagefolder", location),), hflip=hflip)


