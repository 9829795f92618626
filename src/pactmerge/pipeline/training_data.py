"""Exact mid-epoch resumption for any data module.

Lightning restarts an interrupted epoch from its first batch unless the loader is resumable,
and it does not store random-number-generator states. ``ResumableData`` wraps a data module
so that a run resumed from a checkpoint sees the same batches, in the same order, with the
same random state as an uninterrupted one:

- at the start of every training epoch it records the RNG states (Python, NumPy, torch CPU
  and CUDA) from which the loader's shuffling and augmentation are drawn;
- a checkpoint stores those, the number of batches the epoch has consumed and the current RNG
  states (``state_dict``);
- on resume the epoch's RNG states are restored, the loader is re-iterated past the consumed
  batches, and the RNG states of the checkpoint moment are restored.

Validation and test loaders get a generator of their own (``_own_generator``): iterating
them draws nothing from the global RNG, so validating (or not, as a resumed run does not
replay a validation that followed its checkpoint) never changes training's random stream.

Skipping re-loads the consumed batches of the interrupted epoch (not the whole run). A loader
with ``set_epoch(epoch)`` (a per-epoch seeded plan, like ``DistributedSampler``) is told the
trainer's epoch before every epoch, so its plan survives a restart too.

Under DDP (world size > 1) a ``torch.utils.data.DataLoader`` passes through untouched so that
Lightning can insert its ``DistributedSampler``; an interrupted epoch then restarts from its
first batch (Lightning's own behaviour, with its warning). Other loaders (which shard
themselves) keep the batch skipping but not the RNG restoration, whose saved state is rank 0's.
Random augmentation inside persistent DataLoader workers cannot be replayed either. In
these cases resumption is faithful but not bitwise.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader


def get_rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # plain Python values so that Lightning's weights-only checkpoint loading accepts them
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _own_generator(loaders: Any) -> Any:
    """Give every ``DataLoader`` in ``loaders`` (one, or a list, tuple or dict of them) that has no
    generator one of its own, so that iterating it leaves the global torch RNG untouched.

    A ``DataLoader`` draws its workers' base seed from ``loader.generator``, else from the global
    RNG, every time it is iterated. Validation runs between a checkpoint written at the end of a
    training step and the next step; a run resumed from that checkpoint does not replay it. Were
    the draw taken from the global RNG, the uninterrupted run's later shuffling and augmentation
    would have moved on by one draw per validation loader and the resumed run's would not.
    """
    if isinstance(loaders, DataLoader):
        if loaders.generator is None:
            loaders.generator = torch.Generator().manual_seed(0)
        return loaders
    if isinstance(loaders, (list, tuple)):
        return type(loaders)(_own_generator(x) for x in loaders)
    if isinstance(loaders, dict):
        return {k: _own_generator(v) for k, v in loaders.items()}
    return loaders


class _ResumableLoader:
    """Iterates ``loader``; see ``ResumableData``."""

    def __init__(self, loader: Any, owner: "ResumableData") -> None:
        self.loader = loader
        self.owner = owner

    def __len__(self) -> int:
        return len(self.loader)

    # The resume state lives in ResumableData.state_dict; these only tell Lightning that this
    # loader does resume mid-epoch (so it does not warn that it cannot).
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        resume = self.owner._resume
        self.owner._resume = None
        trainer = self.owner.trainer
        epoch = trainer.current_epoch
        restore = set_rng_state if trainer.world_size == 1 else (lambda state: None)
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        if resume is not None and resume["epoch"] == epoch and resume["batches"] > 0:
            restore(resume["epoch_rng"])
            self.owner._epoch_rng = get_rng_state()
            it = iter(self.loader)
            for _ in range(resume["batches"]):
                next(it)
            restore(resume["rng"])
            yield from it
            return
        if resume is not None:  # the checkpoint closed an epoch: continue from its RNG state
            restore(resume["rng"])
        self.owner._epoch_rng = get_rng_state()
        yield from self.loader


class ResumableData(pl.LightningDataModule):
    """Delegates to ``inner`` (a LightningDataModule) and makes its training loader resumable."""

    def __init__(self, inner: pl.LightningDataModule) -> None:
        super().__init__()
        self.inner = inner
        self._resume: dict[str, Any] | None = None
        self._epoch_rng: dict[str, Any] | None = None

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    def setup(self, stage: str) -> None:
        self.inner.trainer = self.trainer
        self.inner.setup(stage)

    def teardown(self, stage: str) -> None:
        self.inner.teardown(stage)

    def train_dataloader(self) -> Any:
        loader = self.inner.train_dataloader()
        if self.trainer is not None and self.trainer.world_size > 1 and isinstance(loader, DataLoader):
            return loader
        return _ResumableLoader(loader, self)

    def val_dataloader(self) -> Any:
        return _own_generator(self.inner.val_dataloader())

    def test_dataloader(self) -> Any:
        return _own_generator(self.inner.test_dataloader())

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.inner.on_before_batch_transfer(batch, dataloader_idx)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return self.inner.transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.inner.on_after_batch_transfer(batch, dataloader_idx)

    def state_dict(self) -> dict[str, Any]:
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {
            "epoch": self.trainer.current_epoch,
            "batches": progress.processed,  # saved from on_train_batch_end: this batch is done
            "epoch_rng": self._epoch_rng,
            "rng": get_rng_state(),
            "inner": self.inner.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
        if state.get("epoch_rng") is not None:
            self._resume = state
