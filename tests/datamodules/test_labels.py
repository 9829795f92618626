"""Labels are read against the task's class list: ClassLabel names matched by name, aliases, refusals."""

import logging

import numpy as np
import pytest

from dm_helpers import make_parquet
from pactmerge.datamodules import DataConfig, TaskDataModule, get_task, list_tasks
from pactmerge.datamodules.labels import class_label_order, norm
from pactmerge.errors import DataError

EUROSAT_HUB = ["annual_crop_land", "forest", "brushland_or_shrubland", "highway_or_road",
               "industrial_buildings_or_commercial_buildings", "pasture_land", "permanent_crop_land",
               "residential_buildings_or_homes_or_apartments", "river", "lake_or_sea"]


def _module(source, tmp_path, task="eurosat"):
    conf = DataConfig(image_size=20, num_workers=0, val_fraction=0.2, source=str(source))
    return TaskDataModule(task, conf)


def _copy(tmp_path, names, name="copy"):
    """A parquet copy whose ClassLabel lists ``names``; image k has ClassLabel label k % len(names)."""
    return make_parquet(tmp_path / name, n_train=20, n_test=40, classes=names)


def test_permuted_class_label_is_remapped_by_name(tmp_path, caplog):
    names = EUROSAT_HUB[::-1]  # reversed order, hub wording (underscores)
    dm = _module(_copy(tmp_path, names), tmp_path)
    classes = get_task("eurosat").classnames
    with caplog.at_level(logging.INFO, logger="pactmerge.datamodules.readers"):
        raw = dm._raw_splits()
    for split, first in (("train", 0), ("test", 20)):
        # row i was written with ClassLabel label (first + i) % 10, i.e. class names[(first + i) % 10]
        want = [classes.index(names[(first + i) % 10].replace("_", " ")) for i in range(len(raw[split]))]
        assert raw[split].labels.tolist() == want
    assert raw["test"].labels[0] == 9  # names[0] = lake_or_sea = task label 9, not 0
    remaps = [r for r in caplog.records if "remapped by name" in r.getMessage()]
    assert len(remaps) == 1, [r.getMessage() for r in caplog.records]  # one line for the source, not per split
    assert "10 of 10 classes" in remaps[0].getMessage()


def test_foreign_class_name_is_refused_showing_both_lists(tmp_path):
    names = list(EUROSAT_HUB)
    names[3] = "volcano"
    dm = _module(_copy(tmp_path, names), tmp_path)
    with pytest.raises(DataError) as err:
        dm.split_sizes()
    msg = str(err.value)
    assert "'volcano'" in msg and "[3] source 'volcano' / task 'highway or road'" in msg
    assert "aliases" in msg


def test_wrong_class_count_is_refused(tmp_path):
    dm = _module(_copy(tmp_path, EUROSAT_HUB[:9]), tmp_path)
    with pytest.raises(DataError, match=r"9 source classes for 10 task classes.*\[9\] source \(none\) / task 'lake or sea'"):
        dm.split_sizes()


def test_hub_wordings_are_aliases_and_keep_the_order(tmp_path, caplog):
    digits = [str(i) for i in range(10)]  # SVHN's and KMNIST's ClassLabel names
    for task in ("svhn", "kmnist"):
        dm = _module(_copy(tmp_path, digits, name=task), tmp_path, task=task)
        with caplog.at_level(logging.INFO):
            labels = dm._raw_splits()["test"].labels
        assert labels.tolist() == [(20 + i) % 10 for i in range(40)]
    assert not [r for r in caplog.records if "remapped" in r.getMessage()]
    cifar = [c.replace(" ", "_") for c in get_task("cifar100").classnames]
    cifar[26] = "cra"  # the card's wording of crab
    assert class_label_order(cifar, get_task("cifar100").classnames, get_task("cifar100").folder_aliases, "x") is None
    fashion = ["T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    task = get_task("fashion_mnist")
    assert class_label_order(fashion, task.classnames, task.folder_aliases, "x") is None


def test_string_labels_use_names_and_aliases(tmp_path):
    import datasets
    from PIL import Image

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    img = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    for split, labels in (("train", ["AnnualCrop", "SeaLake"] * 5), ("test", ["Forest", "sea_lake", "volcano"])):
        (tmp_path / "s").mkdir(exist_ok=True)
        datasets.Dataset.from_dict({"image": [img] * len(labels), "label": labels}, features=feats).to_parquet(
            str(tmp_path / "s" / f"{split}-00000-of-00001.parquet"))
    dm = _module(tmp_path / "s", tmp_path)
    with pytest.raises(DataError, match="labels outside the class list: \\['volcano'\\]"):
        dm.split_sizes()


def test_food101_follows_the_hub_order():
    classes = get_task("food101").classnames
    assert classes[16] == "cheesecake" and classes[17] == "cheese plate"
    # ethz/food101 lists its classes in the order of meta/classes.txt: sorted, with 'cheesecake'
    # before 'cheese_plate' (the only pair a character-wise sort of folder names swaps)
    assert sorted(classes, key=norm) == classes


@pytest.mark.parametrize("key", list_tasks())
def test_names_and_aliases_are_unambiguous(key):
    task = get_task(key)
    normed = [norm(c) for c in task.classnames]
    assert len(set(normed)) == len(normed), "two classes normalise to one name"
    for alias, target in task.folder_aliases.items():
        assert target in task.classnames, (alias, target)
        assert norm(alias) not in normed or normed.index(norm(alias)) == task.classnames.index(target)


def test_integer_class_names_are_label_indices():
    classes = get_task("gtsrb").classnames
    padded = [f"{i:05d}" for i in range(43)]  # a copy that names classes by their folder numbers
    assert class_label_order(padded, classes, {}, "x") is None
    order = class_label_order([str(i) for i in reversed(range(43))], classes, {}, "x")
    assert order.tolist() == list(reversed(range(43)))
    with pytest.raises(DataError, match=r"not classes of this task: \['43'\]"):
        class_label_order([str(i) for i in range(1, 44)], classes, {}, "x")
