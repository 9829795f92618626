"""Only the splits a task uses are opened: extra splits with unreadable files are never touched."""

from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from dm_helpers import unique_image
from hub_repo import GARBAGE, write_repo
from pactmerge.datamodules import DataConfig, TaskDataModule
from pactmerge.datamodules.hub import file_split_name
from pactmerge.errors import DataError

DIGITS = [str(i) for i in range(10)]


def _split(n: int, first: int, names=DIGITS) -> datasets.Dataset:
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(unique_image(first + i, 8)) for i in range(n)],
         "label": [(first + i) % len(names) for i in range(n)]}, features=feats)


def _module(task, source):
    return TaskDataModule(task, DataConfig(image_size=8, num_workers=0, val_fraction=0.2, source=source))


def test_hub_repo_extra_split_is_never_read(tmp_path):
    # SVHN's card: config cropped_digits with train / test / extra; extra here is garbage bytes
    repo = write_repo(tmp_path / "svhn", {"cropped_digits": {"train": _split(20, 0), "test": _split(10, 20),
                                                             "extra": GARBAGE}})
    with pytest.raises(Exception):  # the fixture is unreadable when every split is loaded
        datasets.load_dataset(str(repo), "cropped_digits", cache_dir=str(tmp_path / "c0"))
    dm = _module("svhn", f"hf:{repo}")
    spec = dm.source_spec()
    assert (spec.kind, spec.name, spec.location) == ("hub", "cropped_digits", str(repo))
    assert dm.split_sizes() == {"train": 16, "val": 4, "test": 10}
    assert sorted(dm._raw_splits()) == ["test", "train"]
    assert dm._raw_splits()["test"].labels.tolist() == [(20 + i) % 10 for i in range(10)]


def test_hub_repo_validation_split_and_corrupted_copies(tmp_path):
    # tanganke-style: train / test plus corrupted copies of test, all unreadable here
    corrupt = {name: GARBAGE for name in ("contrast", "gaussian_noise", "test_contrast")}
    repo = write_repo(tmp_path / "gtsrb", {"default": {"train": _split(20, 0), "test": _split(10, 20), **corrupt}})
    dm = _module("mnist", f"hf:{repo}")  # a digits task whose hub source reads train/test
    assert dm.source_spec().kind == "hub" and dm.split_sizes()["test"] == 10


def test_local_parquet_copy_skips_other_splits(tmp_path):
    root = tmp_path / "pq"
    root.mkdir()
    _split(20, 0).to_parquet(str(root / "train-00000-of-00002.parquet"))
    _split(10, 20).to_parquet(str(root / "train-00001-of-00002.parquet"))
    _split(10, 30).to_parquet(str(root / "test-00000-of-00001.parquet"))
    for name in ("extra-00000-of-00001", "test_contrast-00000-of-00001", "impulse_noise"):
        (root / f"{name}.parquet").write_bytes(GARBAGE)
    dm = _module("mnist", str(root))
    assert dm.source_spec().kind == "parquet"
    assert dm.split_sizes() == {"train": 24, "val": 6, "test": 10}
    assert dm._raw_splits()["test"].labels.tolist() == [(30 + i) % 10 for i in range(10)]


def test_saved_dataset_dict_opens_only_used_splits(tmp_path):
    dd = datasets.DatasetDict({"train": _split(20, 0), "test": _split(10, 20), "extra": _split(5, 30)})
    dd.save_to_disk(str(tmp_path / "disk"))
    for f in (tmp_path / "disk" / "extra").glob("*.arrow"):
        f.write_bytes(GARBAGE)
    dm = _module("mnist", str(tmp_path / "disk"))
    assert dm.source_spec().kind == "disk" and dm.split_sizes()["test"] == 10


def test_missing_split_names_what_there_is(tmp_path):
    repo = write_repo(tmp_path / "r", {"default": {"train": _split(20, 0), "extra": GARBAGE}})
    with pytest.raises(DataError, match=r"no split 'test'; the source has \['extra', 'train'\]"):
        _module("mnist", f"hf:{repo}").split_sizes()


@pytest.mark.parametrize("rel, split", [
    ("data/train-00000-of-00003.parquet", "train"), ("cropped_digits/extra-00000-of-00001.parquet", "extra"),
    ("default/validation/0000.parquet", "validation"), ("valid-00002-of-00004.parquet", "validation"),
    ("mnist-train.arrow", "mnist-train"), ("test_contrast-00000-of-00001.parquet", "test_contrast"),
    ("test/part-3.parquet", "test"),
])
def test_file_split_names(rel, split):
    assert file_split_name(Path(rel)) == split


@pytest.mark.parametrize("prepared", ["every split", "used splits"])
def test_offline_hub_cache_opens_only_used_splits(tmp_path, monkeypatch, prepared):
    """A datasets cache filled online (by ``load_dataset(id, config)``, or by pactmerge with the used
    splits only) serves the hub id offline; the cached ``extra`` split is never opened."""
    from pactmerge.datamodules.hub import load_splits

    repo = write_repo(tmp_path / "svhn", {"cropped_digits": {"train": _split(20, 0), "test": _split(10, 20),
                                                             "extra": _split(5, 30)}})
    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    if prepared == "every split":
        datasets.load_dataset(str(repo), "cropped_digits")
    else:
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        spec = _module("svhn", f"hf:{repo}").source_spec()
        assert sorted(load_splits(spec, None)) == ["test", "train"]
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (cache / "svhn").rename(cache / "ufldl-stanford___svhn")  # where load_dataset("ufldl-stanford/svhn") caches
    for f in (cache / "ufldl-stanford___svhn").rglob("*-extra*.arrow"):
        f.write_bytes(GARBAGE)
    dm = TaskDataModule("svhn", DataConfig(image_size=8, num_workers=0, val_fraction=0.2))
    assert dm.source_spec().location == "ufldl-stanford/svhn"
    assert dm.split_sizes() == {"train": 16, "val": 4, "test": 10}
    assert dm._raw_splits()["test"].labels.tolist() == [(20 + i) % 10 for i in range(10)]
    assert encoded_first_pixel(dm._raw_splits()["test"].load(3)) == unique_image(23, 8)[0, 0].tolist()


def encoded_first_pixel(img):
    return np.asarray(img.convert("RGB"))[0, 0].tolist()
