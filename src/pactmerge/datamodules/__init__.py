"""pactmerge.datamodules: task registry, per-task LightningDataModules, multi-task loading, caches.

Every batch is ``{"images": Tensor (B, 3, H, W), "labels": LongTensor (B,), "task": str}``; call
``dm.gpu_transform(batch, train=...)`` (Lightning does it in ``on_after_batch_transfer``) to get
normalised float images on the batch's device.
"""

from pactmerge.datamodules.config import DataConfig
from pactmerge.datamodules.sources import SourceSpec
from pactmerge.datamodules.tasks import BENCHMARKS, TaskInfo, benchmark_tasks, get_task, list_tasks

__all__ = [
    "BENCHMARKS", "DataConfig", "MultiTaskDataModule", "SequentialSchedule", "SourceSpec", "TaskDataModule",
    "TaskInfo", "benchmark_tasks", "get_task", "list_tasks",
]

# the Lightning data modules (torch) are imported on first use, so the config and the task
# registry can be read without torch (``pactmerge status``)
_LAZY = {"TaskDataModule": "module", "MultiTaskDataModule": "multi", "SequentialSchedule": "multi"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"pactmerge.datamodules.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'pactmerge.datamodules' has no attribute {name!r}")
