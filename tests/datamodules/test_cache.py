"""Pre-decoded cache: equal pixels to the uncached path, reuse, and partial/interrupted builds ignored."""

import json

import numpy as np
import pytest
import torch

from dm_helpers import toy_task
from pactmerge.datamodules import DataConfig, TaskDataModule
from pactmerge.datamodules import cache as cache_mod
from pactmerge.errors import DataError


def builds(cache_dir):
    log = cache_dir / "builds.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def conf(cache_dir=None, **kw):
    return DataConfig(image_size=16, num_workers=0, eval_batch_size=64, val_fraction=0.2,
                      cache_dir=str(cache_dir) if cache_dir else None, **kw)


def all_batches(loader):
    return torch.cat([b["images"] for b in loader]), torch.cat([b["labels"] for b in loader])


def test_cache_round_trip_equals_uncached(imagefolder, tmp_path):
    task = toy_task(str(imagefolder))
    cached = TaskDataModule(task, conf(tmp_path / "cache"))
    cached.prepare_data()
    cached.setup()
    plain = TaskDataModule(task, conf())
    plain.setup()
    for role in ("val", "test"):
        loader = getattr(cached, f"{role}_dataloader")()
        ci, cl = all_batches(loader)
        pi, pl_ = all_batches(getattr(plain, f"{role}_dataloader")())
        assert ci.dtype == torch.uint8 and torch.equal(ci, pi) and torch.equal(cl, pl_)
    assert sorted(b["split"] for b in builds(tmp_path / "cache")) == ["test", "train", "val"]
    header = json.loads(next((tmp_path / "cache" / "toy").glob("test-*.json")).read_text())
    assert {"task", "source", "split", "image_size", "seed", "count", "key"} <= set(header)
    assert header["count"] == 9 and header["image_size"] == 16


def test_cache_is_reused_and_keyed_by_content(imagefolder, tmp_path):
    task = toy_task(str(imagefolder))
    TaskDataModule(task, conf(tmp_path / "c")).prepare_data()
    TaskDataModule(task, conf(tmp_path / "c")).prepare_data()
    assert len(builds(tmp_path / "c")) == 3  # second module reused all three
    TaskDataModule(task, conf(tmp_path / "c", seed=1)).prepare_data()
    assert len(builds(tmp_path / "c")) == 6  # another seed -> other splits -> new caches (train/val) and test by key


def test_partial_cache_is_ignored_and_rebuilt(imagefolder, tmp_path):
    task = toy_task(str(imagefolder))
    dm = TaskDataModule(task, conf(tmp_path / "c"))
    dm.prepare_data()
    images = next((tmp_path / "c" / "toy").glob("test-*.u8"))
    header = images.with_suffix(".json")
    good = np.fromfile(images, dtype=np.uint8)
    images.write_bytes(good[: len(good) // 2].tobytes())  # truncated data behind a header
    TaskDataModule(task, conf(tmp_path / "c")).prepare_data()
    assert len(builds(tmp_path / "c")) == 4
    assert np.array_equal(np.fromfile(images, dtype=np.uint8), good)
    header.unlink()  # no header = build never finished
    TaskDataModule(task, conf(tmp_path / "c")).prepare_data()
    assert len(builds(tmp_path / "c")) == 5 and header.is_file()


def test_interrupted_build_leaves_nothing_usable(imagefolder, tmp_path, monkeypatch):
    task = toy_task(str(imagefolder))
    dm = TaskDataModule(task, conf(tmp_path / "c"))
    split, idx = dm.split_indices()["train"]

    class Boom(Exception):
        pass

    calls = {"n": 0}
    real = cache_mod.DecodedDataset.__getitem__

    def flaky(self, i):
        calls["n"] += 1
        if calls["n"] == 10:
            raise Boom("interrupted")
        return real(self, i)

    monkeypatch.setattr(cache_mod.DecodedDataset, "__getitem__", flaky)
    with pytest.raises(Boom):
        dm.prepare_data()
    monkeypatch.undo()
    leftovers = list((tmp_path / "c" / "toy").glob("train-*"))
    assert leftovers == [], leftovers  # temporary file removed, no header, no data file
    dm2 = TaskDataModule(task, conf(tmp_path / "c"))
    dm2.prepare_data()
    dm2.setup()
    assert len(dm2.datasets["train"]) == len(idx)


def test_corrupt_image_stops_and_names_the_file(imagefolder, tmp_path):
    bad = imagefolder / "test" / "red" / "99999.png"
    bad.write_bytes(b"not an image at all")
    dm = TaskDataModule(toy_task(str(imagefolder)), conf(tmp_path / "c"))
    with pytest.raises(DataError, match="corrupt image .*99999.png"):
        dm.prepare_data()
    assert not list((tmp_path / "c" / "toy").glob("test-*.json"))
