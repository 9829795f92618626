"""Several tasks at once: joint training batches (one task per batch) and a sequential schedule."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pactmerge.datamodules.image_datasets import TaskCollate
from pactmerge.datamodules.module import TaskDataModule
from pactmerge.errors import ConfigError

SAMPLING = ("balanced", "proportional")


def batch_plan(sizes: Sequence[int], batch_size: int, sampling: str, seed: int, epoch: int) -> list[tuple[int, np.ndarray]]:
    """The batches of one epoch: ``[(task index, dataset indices), ...]`` in training order.

    ``proportional``: every image of every task once, batches interleaved at random (a task's share
    of batches follows its size). ``balanced``: the same total number of batches, split equally
    between tasks; small tasks cycle through reshuffled passes, large ones see a different subset
    each epoch; the order is a sequence of rounds, each a random permutation of the tasks.
    """
    rng = np.random.default_rng([seed, epoch])
    per_task = [math.ceil(n / batch_size) for n in sizes]
    if sampling == "proportional":
        plan = []
        for t, n in enumerate(sizes):
            perm = rng.permutation(n)
            plan += [(t, perm[i: i + batch_size]) for i in range(0, n, batch_size)]
        order = rng.permutation(len(plan))
        return [plan[i] for i in order]
    k = math.ceil(sum(per_task) / len(sizes))
    batches = []
    for n in sizes:
        need = k * batch_size
        stream = np.concatenate([rng.permutation(n) for _ in range(math.ceil(need / n))])[:need]
        batches.append([stream[i * batch_size: (i + 1) * batch_size] for i in range(k)])
    plan = []
    for r in range(k):
        plan += [(int(t), batches[t][r]) for t in rng.permutation(len(sizes))]
    return plan


class _PlanDataset(IterableDataset):
    """Loads the batches of a plan; each worker takes every ``num_workers``-th batch."""

    def __init__(self, datasets, collates, plan):
        self.datasets, self.collates, self.plan = datasets, collates, plan

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for t, idx in self.plan[wid::nw]:
            ds = self.datasets[t]
            samples = ds.__getitems__(idx.tolist()) if hasattr(ds, "__getitems__") else [ds[int(i)] for i in idx]
            yield self.collates[t](samples)


class MultiTaskLoader:
    """Iterable of single-task batches over several datasets; a fresh plan each epoch, split across DDP ranks."""

    def __init__(self, datasets, tasks, batch_size: int, sampling: str, seed: int, num_workers: int):
        self.datasets, self.tasks = list(datasets), list(tasks)
        self.batch_size, self.sampling, self.seed, self.num_workers = batch_size, sampling, seed, num_workers
        self.epoch = 0

    def _rank_plan(self, epoch: int):
        plan = batch_plan([len(d) for d in self.datasets], self.batch_size, self.sampling, self.seed, epoch)
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
        plan = plan[: len(plan) - len(plan) % world] if world > 1 else plan  # same step count on every rank
        return plan[rank::world]

    def set_epoch(self, epoch: int) -> None:
        """Use the plan of ``epoch`` next (as ``DistributedSampler.set_epoch``), so a resumed run replays it."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._rank_plan(self.epoch))

    def __iter__(self) -> Iterator[dict]:
        plan = self._rank_plan(self.epoch)
        self.epoch += 1
        ds = _PlanDataset(self.datasets, [TaskCollate(t) for t in self.tasks], plan)
        loader = DataLoader(ds, batch_size=None, num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
        return iter(loader)


class MultiTaskDataModule(pl.LightningDataModule):
    """Joint training over several TaskDataModules: each train batch comes from one task (``batch["task"]``).

    ``val_dataloader()`` / ``test_dataloader()`` return one loader per task, in ``tasks`` order.
    Batch size, workers and seed of the training loader come from the first module's config.
    """

    def __init__(self, modules: Sequence[TaskDataModule], sampling: str = "balanced", seed: int = 0):
        super().__init__()
        if not modules:
            raise ConfigError("MultiTaskDataModule needs at least one TaskDataModule")
        if sampling not in SAMPLING:
            raise ConfigError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLING)}")
        self.modules = list(modules)
        keys = [m.task.key for m in self.modules]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"MultiTaskDataModule: duplicate tasks in {keys}")
        self._by_task = dict(zip(keys, self.modules))
        self.sampling, self.seed = sampling, seed

    @property
    def tasks(self) -> list[str]:
        return list(self._by_task)

    def prepare_data(self) -> None:
        for m in self.modules:
            m.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        for m in self.modules:
            m.setup(stage)

    def train_dataloader(self) -> MultiTaskLoader:
        self.setup()
        cfg = self.modules[0].config
        return MultiTaskLoader([m.datasets["train"] for m in self.modules], self.tasks, cfg.batch_size,
                               self.sampling, self.seed, cfg.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        return [m.val_dataloader() for m in self.modules]

    def test_dataloader(self) -> list[DataLoader]:
        return [m.test_dataloader() for m in self.modules]

    def gpu_transform(self, batch: dict, train: bool) -> dict:
        return self._by_task[batch["task"]].gpu_transform(batch, train)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        training = bool(self.trainer is not None and self.trainer.training)
        return self.gpu_transform(batch, train=training)


class SequentialSchedule:
    """An ordered list of single-task modules (sequential fine-tuning); iterating yields them in order."""

    def __init__(self, modules: Sequence[TaskDataModule]):
        self.modules = list(modules)

    @property
    def order(self) -> list[str]:
        return [m.task.key for m in self.modules]

    def __iter__(self) -> Iterator[TaskDataModule]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)

    def __getitem__(self, i: int) -> TaskDataModule:
        return self.modules[i]
