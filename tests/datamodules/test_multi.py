from collections import Counter

import numpy as np
import pytest
import torch

from dm_helpers import make_imagefolder
from pactmerge.datamodules import DataConfig, MultiTaskDataModule, SequentialSchedule, TaskDataModule, TaskInfo
from pactmerge.datamodules.multi import batch_plan
from pactmerge.datamodules.sources import SourceSpec
from pactmerge.errors import ConfigError


def test_proportional_plan_covers_every_image_once():
    plan = batch_plan([10, 25, 7], batch_size=4, sampling="proportional", seed=0, epoch=0)
    for t, n in enumerate([10, 25, 7]):
        seen = np.concatenate([idx for tt, idx in plan if tt == t])
        assert sorted(seen.tolist()) == list(range(n))


def test_balanced_plan_gives_each_task_the_same_batches():
    plan = batch_plan([10, 100, 7], batch_size=4, sampling="balanced", seed=0, epoch=0)
    counts = Counter(t for t, _ in plan)
    assert len(set(counts.values())) == 1 and set(counts) == {0, 1, 2}
    assert all(len(idx) == 4 for _, idx in plan)
    assert all(idx.max() < [10, 100, 7][t] for t, idx in plan)
    for start in range(0, len(plan), 3):  # every round holds each task once
        assert sorted(t for t, _ in plan[start:start + 3]) == [0, 1, 2]
    other = batch_plan([10, 100, 7], batch_size=4, sampling="balanced", seed=0, epoch=1)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(plan, other))


def _modules(tmp_path, workers=0):
    cfg = DataConfig(image_size=16, batch_size=4, num_workers=workers, val_fraction=0.2)
    roots = [make_imagefolder(tmp_path / f"f{i}", n_train=10 * (i + 1), n_test=3) for i in range(3)]
    tasks = [TaskInfo(f"toy{i}", "Toy", ["red", "green", "blue"], ["{}"], (SourceSpec("imagefolder", str(r)),))
             for i, r in enumerate(roots)]
    return [TaskDataModule(t, cfg) for t in tasks]


@pytest.mark.parametrize("workers", [0, 2])
def test_multitask_batches_come_from_every_task_balanced(tmp_path, workers):
    mods = _modules(tmp_path, workers)
    dm = MultiTaskDataModule(mods, sampling="balanced", seed=0)
    dm.setup("fit")
    assert dm.tasks == ["toy0", "toy1", "toy2"]
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader)
    counts = Counter(b["task"] for b in batches)
    assert set(counts) == set(dm.tasks) and len(set(counts.values())) == 1
    for b in batches:
        assert isinstance(b["task"], str) and b["images"].shape[1:] == (3, 16, 16)
        out = dm.gpu_transform(b, train=True)
        assert out["images"].dtype == torch.float32 and out["task"] == b["task"]
    vals = dm.val_dataloader()
    assert [next(iter(v))["task"] for v in vals] == dm.tasks


def test_multitask_proportional_sees_every_training_image(tmp_path):
    mods = _modules(tmp_path)
    dm = MultiTaskDataModule(mods, sampling="proportional")
    dm.setup("fit")
    counts = Counter()
    for b in dm.train_dataloader():
        counts[b["task"]] += len(b["labels"])
    assert counts == {m.task.key: len(m.datasets["train"]) for m in mods}


def test_multitask_rejects_bad_arguments(tmp_path):
    mods = _modules(tmp_path)
    with pytest.raises(ConfigError, match="unknown sampling"):
        MultiTaskDataModule(mods, sampling="uniform")
    with pytest.raises(ConfigError, match="duplicate"):
        MultiTaskDataModule([mods[0], mods[0]])


def test_sequential_schedule_keeps_order(tmp_path):
    mods = _modules(tmp_path)
    order = [mods[2], mods[0], mods[1]]
    sched = SequentialSchedule(order)
    assert sched.order == ["toy2", "toy0", "toy1"]
    assert [m.task.key for m in sched] == sched.order and len(sched) == 3 and sched[0] is mods[2]
