"""The 20 benchmark sources, as their dataset cards declare them, read through the hub path."""

import numpy as np
import pytest

from hub_fixtures import CARDS, encoded_label
from pactmerge.datamodules import BENCHMARKS, DataConfig, TaskDataModule, get_task
from pactmerge.datamodules.hub import used_splits
from pactmerge.datamodules.labels import name_index, norm

TWENTY = BENCHMARKS["20"]


def test_one_card_per_task():
    assert sorted(CARDS) == sorted(TWENTY)


@pytest.mark.parametrize("task", TWENTY)
def test_card_agrees_with_the_registry(task):
    """The registry's source, splits and class order are the card's: no remapping on the real hub."""
    card, info = CARDS[task], get_task(task)
    by_name = name_index(info.classnames, info.folder_aliases)
    assert [by_name.get(norm(n)) for n in card.names] == list(range(info.num_classes))
    if card.imagefolder:
        assert [s.kind for s in info.sources] == ["imagefolder"]
        return
    hub = next(s for s in info.sources if s.kind == "hub")
    assert hub.location == card.repo
    assert hub.name == card.config or (hub.name is None and not card.other_configs)
    assert (hub.image_column, hub.label_column) == ("image", "label")
    assert set(used_splits(hub)) == {s for s, n in card.splits.items() if n}  # the card's image splits, no others


@pytest.mark.parametrize("task", TWENTY)
def test_fixture_reads_through_the_hub_path(task, hub_sources):
    card, info = CARDS[task], get_task(task)
    dm = TaskDataModule(task, DataConfig(image_size=8, num_workers=0, sources={task: hub_sources[task]}))
    spec = dm.source_spec()
    if card.imagefolder:
        assert spec.kind == "imagefolder"
    else:
        hub = next(s for s in info.sources if s.kind == "hub")
        assert spec.kind == "hub" and spec.location == hub_sources[task][3:]
        assert (spec.name, spec.train_split, spec.val_split, spec.test_split) == (
            hub.name, hub.train_split, hub.val_split, hub.test_split)
    raw = dm._raw_splits()
    assert sorted(raw) == sorted(s for s, n in card.splits.items() if n)
    for split, rs in raw.items():
        encoded = [encoded_label(rs.load(i)) for i in range(len(rs))]
        assert rs.labels.tolist() == encoded, split  # every label is the image's class
        assert np.bincount(encoded, minlength=info.num_classes).tolist() == [card.splits[split]] * info.num_classes
    test_split = spec.test_split
    assert dm.split_sizes()["test"] == card.splits[test_split] * info.num_classes
