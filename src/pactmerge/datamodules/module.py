"""TaskDataModule: one LightningDataModule per task (train / val / test loaders of task batches)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from pactmerge.datamodules import cache as cache_mod
from pactmerge.datamodules import offline
from pactmerge.datamodules.config import DataConfig
from pactmerge.datamodules.image_datasets import CachedDataset, DecodedDataset, FinishBatch, PILDataset, TaskCollate
from pactmerge.datamodules.readers import RawSplit, hf_splits, idx_splits, imagefolder_splits
from pactmerge.datamodules.sources import SourceSpec, parse_source
from pactmerge.datamodules.splits import ROLES, plan_splits
from pactmerge.datamodules.tasks import TaskInfo, get_task
from pactmerge.datamodules.transforms import TensorAugment
from pactmerge.errors import DataError

log = logging.getLogger(__name__)


class TaskDataModule(pl.LightningDataModule):
    """Data of one task.

    Two input paths. PIL path (model transforms given, no ``cache_dir``): workers decode with PIL and
    apply ``train_transform`` / ``eval_transform``; batches hold float images and ``gpu_transform``
    is the identity. Tensor path (no transforms, or a ``cache_dir``): images are uint8
    (B, 3, S, S) at ``image_size`` — read from the memmap cache when ``cache_dir`` is set — and
    are augmented (training: random resized crop, flip) and normalised by one ``TensorAugment``:

    - when a trainer runs on the CPU and the loader workers have cores of their own (more cores
      than workers + 1), the workers' collate function finishes the batch, so it overlaps the
      training step; the batch arrives as float and ``gpu_transform`` passes it through;
    - otherwise (a GPU trainer, no trainer, or workers sharing the trainer's cores) loaders deliver
      uint8 and ``gpu_transform`` (``on_after_batch_transfer`` under a trainer) finishes the batch
      on its device. Where workers and trainer share cores this is the cheaper arrangement: a
      float batch is 4x the bytes of a uint8 one, and passing it from a worker through fresh
      shared memory costs about as much as augmenting it.

    ``finish_in_loader`` forces one or the other (None: decide as above).
    """

    def __init__(self, task: str | TaskInfo, config: DataConfig | None = None,
                 train_transform: Callable | None = None, eval_transform: Callable | None = None,
                 *, finish_in_loader: bool | None = None):
        super().__init__()
        self.task: TaskInfo = get_task(task) if isinstance(task, str) else task
        self.config = config if config is not None else DataConfig()
        self.train_transform = train_transform
        self.eval_transform = eval_transform if eval_transform is not None else train_transform
        self.tensor_path = self.config.cache_dir is not None or (train_transform is None and eval_transform is None)
        self._augment = TensorAugment(
            self.config.image_size, self.config.mean, self.config.std, augment=self.config.train_augment,
            hflip=self.task.hflip, scale=self.config.crop_scale,
        )
        self.finish_in_loader = finish_in_loader
        self._raw: dict[str, RawSplit] | None = None
        self._spec: SourceSpec | None = None
        self._plan: dict[str, tuple[str, np.ndarray]] | None = None
        self.datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------------------------ sources
    @property
    def num_classes(self) -> int:
        return len(self.task.classnames)

    def source_spec(self) -> SourceSpec:
        """The source in use: per-task override > ``source`` > ``<data_dir>/<task>`` > first available default."""
        if self._spec is None:
            cfg = self.config
            default = next((s for s in self.task.sources if s.kind == "hub"), self.task.source)  # a copy reads as the hub
            override = cfg.sources.get(self.task.key) or cfg.source
            local = Path(cfg.data_dir) / self.task.key if cfg.data_dir else None
            if override:
                self._spec = parse_source(override, default)
            elif local is not None and local.is_dir():
                self._spec = parse_source(str(local), default)
            else:
                usable = [s for s in self.task.sources if s.kind != "offline" or offline.available(s.location)]
                self._spec = (usable or list(self.task.sources))[0]
        return self._spec

    def _raw_splits(self) -> dict[str, RawSplit]:
        if self._raw is None:
            spec, task = self.source_spec(), self.task
            if spec.kind == "offline":
                self._raw = offline.load(spec.location)
            elif spec.kind == "imagefolder":
                root = Path(spec.location)
                if not root.is_absolute() and self.config.data_dir:
                    root = Path(self.config.data_dir) / root
                if not root.is_dir():
                    raise DataError(f"task {task.key}: data directory {root} does not exist; provide {spec.install or 'an ImageFolder tree'}")
                self._raw = imagefolder_splits(root, task.classnames, task.folder_aliases, task.key)
            elif spec.kind == "idx":
                self._raw = idx_splits(Path(spec.location), task.key)
            else:
                self._raw = hf_splits(spec, task.classnames, task.key, self.config.cache_dir, task.folder_aliases)
            for split in self._raw.values():
                _check_labels(split, self.num_classes, task.key)
        return self._raw

    def split_indices(self) -> dict[str, tuple[str, np.ndarray]]:
        """``{"train"|"val"|"test": (source split, sorted source indices)}``, deterministic for the seed."""
        if self._plan is None:
            raw, cfg = self._raw_splits(), self.config
            self._plan = plan_splits(
                {k: len(v) for k, v in raw.items()}, self.source_spec(), seed=cfg.seed, val_fraction=cfg.val_fraction,
                max_val=cfg.max_val, max_train=cfg.max_train, max_eval=cfg.max_eval, where=f"task {self.task.key}",
            )
        return self._plan

    def split_sizes(self) -> dict[str, int]:
        return {role: len(idx) for role, (_, idx) in self.split_indices().items()}

    # ------------------------------------------------------------------------------------ Lightning
    def prepare_data(self) -> None:
        """Open the source (downloads on a networked machine) and build missing caches: one process per node."""
        self.split_indices()
        if self.config.cache_dir is not None:
            for role in ROLES:
                self._cached(role, build=True)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        plan, raw, size = self.split_indices(), self._raw_splits(), self.config.image_size
        for role, (split, idx) in plan.items():
            if self.config.cache_dir is not None:
                self.datasets[role] = self._cached(role, build=True)
            elif self.tensor_path:
                self.datasets[role] = DecodedDataset(raw[split], idx, size)
            else:
                tf = self.train_transform if role == "train" else self.eval_transform
                self.datasets[role] = PILDataset(raw[split], idx, tf)
        log.info("task %s: source %s, sizes %s", self.task.key, self.source_spec().describe(), self.split_sizes())

    def _cached(self, role: str, build: bool) -> CachedDataset:
        split, idx = self.split_indices()[role]
        size, cfg = self.config.image_size, self.config
        meta = cache_mod.describe(self.task.key, self.source_spec().describe(), role, split, idx, size, cfg.seed)
        found = cache_mod.open_cache(cfg.cache_dir, meta)
        if found is None:
            found = cache_mod.build_cache(cfg.cache_dir, meta, DecodedDataset(self._raw_splits()[split], idx, size),
                                          num_workers=cfg.num_workers)
        return CachedDataset(found[0], found[1], size)

    def fingerprint(self) -> dict[str, dict]:
        """``{role: {"count": N, "sha256": content hash or None}}`` of the train / val / test splits.

        The hash is the pre-decoded cache's ``content_sha256`` (pixels and labels); without a
        ``cache_dir`` there is no stored content to hash and ``sha256`` is None.
        """
        out = {}
        for role, (split, idx) in self.split_indices().items():
            sha = None
            if self.config.cache_dir is not None:
                meta = cache_mod.describe(self.task.key, self.source_spec().describe(), role, split, idx,
                                          self.config.image_size, self.config.seed)
                if cache_mod.open_cache(self.config.cache_dir, meta) is not None:
                    sha = (cache_mod.read_header(self.config.cache_dir, meta) or {}).get("content_sha256")
            out[role] = {"count": int(len(idx)), "sha256": sha}
        return out

    def finishes_in_loader(self) -> bool:
        """Whether loaders deliver finished float batches (tensor path on the CPU); see the class docstring."""
        if not self.tensor_path:
            return False
        if self.finish_in_loader is not None:
            return self.finish_in_loader
        trainer = self.trainer
        return trainer is not None and loader_finishes(trainer.strategy.root_device.type, self.config.num_workers)

    def collate_fn(self, train: bool) -> TaskCollate:
        """The collate function of this task's loaders (finishing the batch when ``finishes_in_loader()``)."""
        finish = FinishBatch(self._augment, train) if self.finishes_in_loader() else None
        return TaskCollate(self.task.key, finish)

    def _loader(self, role: str, train: bool) -> DataLoader:
        if role not in self.datasets:
            self.setup()
        cfg = self.config
        return DataLoader(
            self.datasets[role], batch_size=cfg.batch_size if train else cfg.eval_batch_size, shuffle=train,
            num_workers=cfg.num_workers, collate_fn=self.collate_fn(train), pin_memory=torch.cuda.is_available(),
            persistent_workers=cfg.num_workers > 0, drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def gpu_transform(self, batch: dict, train: bool) -> dict:
        """Augment (when ``train``) and normalise a batch on its device; identity for float (already finished) images."""
        return {**batch, "images": self._augment(batch["images"], train)}

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        training = bool(self.trainer is not None and self.trainer.training)
        return self.gpu_transform(batch, train=training)


def loader_finishes(device_type: str, num_workers: int, cores: int | None = None) -> bool:
    """Whether a trainer on ``device_type`` gets finished batches from its loader (see ``TaskDataModule``)."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
    return device_type == "cpu" and num_workers > 0 and cores > num_workers + 1


def _check_labels(split: RawSplit, num_classes: int, task: str) -> None:
    labels = split.labels
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DataError(
            f"task {task}: {len(bad)} labels outside the class list (0..{num_classes - 1}) in {split.name}, "
            f"e.g. {split.ident(int(bad[0]))} has label {int(labels[bad[0]])}; this source does not match the task"
        )
