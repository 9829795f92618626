"""The offline default suite loads real data: right classes, sizes, real non-constant pixels, fast."""

import time

import numpy as np
import pytest
import torch

from pactmerge.datamodules import DataConfig, TaskDataModule, benchmark_tasks
from pactmerge.datamodules import offline

FULL_SIZES = {  # train / val / test under the default split rule
    "mnist": {"train": 55000, "val": 5000, "test": 10000},
    "fashion_mnist": {"train": 55000, "val": 5000, "test": 10000},
    "digits": {"train": 1294, "val": 144, "test": 359},
    "faces": {"train": 135, "val": 15, "test": 50},
}


@pytest.mark.parametrize("key", benchmark_tasks("offline"))
def test_offline_task_loads_real_images(key):
    if not offline.available(key):
        pytest.skip(f"offline data for {key} not installed")
    t0 = time.perf_counter()
    dm = TaskDataModule(key, DataConfig(image_size=32, max_train=300, max_eval=100, num_workers=0, batch_size=64))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert time.perf_counter() - t0 < 20, "offline setup must take seconds"
    assert dm.num_classes == {"faces": 2}.get(key, 10)
    full = TaskDataModule(key, DataConfig(num_workers=0)).split_sizes()
    assert full == FULL_SIZES[key]
    imgs = batch["images"]
    assert imgs.dtype == torch.uint8 and imgs.shape[1:] == (3, 32, 32)
    flat = imgs.float().flatten(1)
    assert (flat.std(dim=1) > 1).all(), "every image has real, non-constant pixels"
    assert len({row.numpy().tobytes() for row in imgs}) == len(imgs), "images differ from one another"
    assert torch.equal(imgs[:, 0], imgs[:, 1]) and torch.equal(imgs[:, 1], imgs[:, 2])  # grayscale -> RGB
    all_labels = np.concatenate([dm.datasets[r].labels for r in ("train", "val", "test")])
    assert set(all_labels.tolist()) == set(range(dm.num_classes))


def test_offline_test_splits_are_fixed_and_disjoint_for_digits_and_faces():
    for key in ("digits", "faces"):
        a, b = offline.load(key), offline.load(key)
        assert np.array_equal(a["test"].images, b["test"].images)
        train = {x.tobytes() for x in a["train"].images}
        assert not any(x.tobytes() in train for x in a["test"].images)
    faces = offline.load("faces")
    assert np.bincount(faces["test"].labels).tolist() == [25, 25]
