import numpy as np
import pytest

from pactmerge.datamodules import DataConfig, TaskDataModule
from pactmerge.datamodules.sources import SourceSpec
from pactmerge.datamodules.splits import plan_splits
from pactmerge.errors import DataError

from dm_helpers import toy_task

SPEC = SourceSpec("hub", "x/y")


def plan(sizes, spec=SPEC, **kw):
    args = dict(seed=0, val_fraction=0.1, max_val=5000, max_train=None, max_eval=None, where="t")
    args.update(kw)
    return plan_splits(sizes, spec, **args)


def test_validation_is_a_seeded_tenth_of_train_and_disjoint():
    p = plan({"train": 1000, "test": 300})
    (tr_s, tr), (va_s, va), (te_s, te) = p["train"], p["val"], p["test"]
    assert tr_s == va_s == "train" and te_s == "test"
    assert len(va) == 100 and len(tr) == 900
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(1000))
    assert np.array_equal(te, np.arange(300))  # test untouched
    again = plan({"train": 1000, "test": 300})
    assert all(np.array_equal(p[r][1], again[r][1]) for r in p)
    other = plan({"train": 1000, "test": 300}, seed=1)
    assert not np.array_equal(p["val"][1], other["val"][1])


def test_validation_is_capped_at_max_val():
    p = plan({"train": 100_000, "test": 10}, max_val=5000)
    assert len(p["val"][1]) == 5000 and len(p["train"][1]) == 95_000


def test_official_validation_split_is_used_when_present():
    spec = SourceSpec("hub", "x/y", val_split="validation")
    p = plan({"train": 50, "validation": 20, "test": 30}, spec=spec)
    assert p["val"][0] == "validation" and len(p["val"][1]) == 20
    assert len(p["train"][1]) == 50


def test_caps_keep_seeded_subsets():
    full = plan({"train": 1000, "test": 300})
    capped = plan({"train": 1000, "test": 300}, max_train=200, max_eval=50)
    assert len(capped["train"][1]) == 200 and set(capped["train"][1]) <= set(full["train"][1])
    assert len(capped["val"][1]) == 50 and set(capped["val"][1]) <= set(full["val"][1])
    assert len(capped["test"][1]) == 50
    assert np.array_equal(capped["train"][1], plan({"train": 1000, "test": 300}, max_train=200, max_eval=50)["train"][1])


def test_missing_split_is_named():
    with pytest.raises(DataError, match="no split 'test'"):
        plan({"train": 10})


def _pixels(ds):
    return {ds[i][0].numpy().tobytes() for i in range(len(ds))}


def test_module_splits_are_disjoint_by_content(imagefolder):
    dm = TaskDataModule(toy_task(str(imagefolder)), DataConfig(image_size=20, val_fraction=0.2, num_workers=0))
    dm.setup()
    train, val, test = (_pixels(dm.datasets[r]) for r in ("train", "val", "test"))
    assert len(train) == 24 and len(val) == 6 and len(test) == 9
    assert not (train & val) and not (train & test) and not (val & test)
