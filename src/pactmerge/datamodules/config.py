"""DataConfig: every data option, with defaults that suit a GPU run of the benchmark."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pactmerge.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def default_num_workers() -> int:
    """Loader workers: none on machines with <= 2 cores (worker start-up costs more than it saves), else cores - 1 (at most 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


@dataclass
class DataConfig:
    """Options of a TaskDataModule.

    ``data_dir``: local root; ``<data_dir>/<task>`` (an ImageFolder, parquet/arrow or IDX directory),
    when it exists, is used instead of the task's default source. ``cache_dir``: where pre-decoded
    uint8 caches go (None = no cache). ``source``: override of the source for this module (hub id,
    ``hf:id[:config]``, ``offline:<name>``, a local directory, or ``hf:/local/dir`` for a folder laid
    out like the task's hub repository, read as the hub id is); ``sources``: per-task overrides
    ``{task_key: source}``, which win over ``source``. ``max_train`` / ``max_eval`` (val and test)
    are deterministic subsampling caps, applied to indices before any image is decoded.
    ``crop_scale``: area range of the random resized crop of the tensor-side augmentation.
    """

    batch_size: int = 128
    eval_batch_size: int = 256
    num_workers: int = field(default_factory=default_num_workers)
    data_dir: str | None = None
    cache_dir: str | None = None
    image_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    seed: int = 0
    val_fraction: float = 0.1
    max_val: int = 5000
    max_train: int | None = None
    max_eval: int | None = None
    source: str | None = None
    train_augment: bool = True
    sources: dict[str, str] = field(default_factory=dict)
    crop_scale: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"DataConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"DataConfig.num_workers must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"DataConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("max_train", "max_eval"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"DataConfig.{name} must be >= 1 or None, got {value}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"DataConfig.mean/std must have 3 entries (std > 0), got {self.mean} / {self.std}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"DataConfig.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        self.mean, self.std = tuple(map(float, self.mean)), tuple(map(float, self.std))
        self.sources = dict(self.sources or {})
