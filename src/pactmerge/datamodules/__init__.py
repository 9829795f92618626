"""pactmerge.datamodules: task registry, per-task LightningDataModules, multi-task loading, caches.

Every batch is ``{"images": Tensor (B, 3, H, W), "labels": LongTensor (B,), "task": str}``; call
``dm.gpu_transform(batch, train=...)`` (Lightning does it in ``on_after_batch_transfer``) to get
normalised float images on the batch's device.
"""

from pactmerge.datamodules.config import DataConfig
from pactmerge.datamodules.module import TaskDataModule
from pactmerge.datamodules.multi import MultiTaskDataModule, SequentialSchedule
from pactmerge.datamodules.sources import SourceSpec
from pactmerge.datamodules.tasks import BENCHMARKS, TaskInfo, benchmark_tasks, get_task, list_tasks

__all__ = [
    "BENCHMARKS", "DataConfig", "MultiTaskDataModule", "SequentialSchedule", "SourceSpec", "TaskDataModule",
    "TaskInfo", "benchmark_tasks", "get_task", "list_tasks",
]
