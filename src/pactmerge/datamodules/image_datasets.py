"""Map-style torch datasets over a raw split, and the collate function of task batches.

Every loader yields ``{"images": Tensor (B, 3, H, W), "labels": LongTensor (B,), "task": str}``;
images are uint8 (channels-last strides) on the tensor/cached paths, float on the PIL path, and
float when the collate function finishes them (``TaskCollate(finish=...)``, see ``TaskDataModule``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from pactmerge.datamodules.readers import RawSplit
from pactmerge.datamodules.transforms import TensorAugment, hwc_to_chw, new_host_tensor, resize_center_crop


class _Rows(NamedTuple):
    """Rows of a cached split requested in one ``__getitems__`` call; TaskCollate reads them in one go."""

    dataset: "CachedDataset"
    indices: np.ndarray


class FinishBatch:
    """``images -> augment(images, train)``: picklable, so loader workers can run it."""

    def __init__(self, augment: TensorAugment, train: bool):
        self.augment, self.train = augment, train

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.augment(images, self.train)


class TaskCollate:
    """Stack samples (image, label) into a task batch dict; picklable for worker processes.

    ``finish`` (optional) maps the stacked images to their final form inside the loader (a worker
    process when there are workers), e.g. a :class:`FinishBatch`; without it uint8 images are
    delivered for ``TaskDataModule.gpu_transform``.
    """

    def __init__(self, task: str, finish: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.task, self.finish = task, finish

    def __call__(self, samples) -> dict:
        # a batch that leaves the worker as is goes straight into shared memory; one that is
        # finished here is a temporary
        shared = None if self.finish is None else False
        if isinstance(samples, _Rows):
            images, labels = samples.dataset.read_rows(samples.indices, shared=shared)
        else:
            first = samples[0][0]
            channels_last = first.dim() == 3 and first.stride(0) == 1 and first.shape[0] > 1
            images = new_host_tensor((len(samples), *first.shape), first.dtype, channels_last=channels_last,
                                     shared=shared)
            for i, s in enumerate(samples):
                images[i].copy_(s[0])
            labels = torch.as_tensor([int(s[1]) for s in samples], dtype=torch.long)
        if self.finish is not None:
            images = self.finish(images)
        return {"images": images, "labels": labels, "task": self.task}


class PILDataset(Dataset):
    """Decode with PIL and apply the model's transform (PIL -> float tensor)."""

    def __init__(self, raw: RawSplit, indices: np.ndarray, transform):
        self.raw, self.indices, self.transform = raw, np.asarray(indices, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        img = self.raw.load(j)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return self.transform(img), int(self.raw.labels[j])


class DecodedDataset(Dataset):
    """Decode and resize to uint8 (3, S, S) (a channels-last view of HWC pixels) on every access (tensor path, no cache)."""

    def __init__(self, raw: RawSplit, indices: np.ndarray, size: int):
        self.raw, self.indices, self.size = raw, np.asarray(indices, dtype=np.int64), size

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.raw.labels[self.indices]

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        return hwc_to_chw(torch.from_numpy(resize_center_crop(self.raw.load(j), self.size))), int(self.raw.labels[j])


class CachedDataset(Dataset):
    """Rows of a pre-decoded uint8 memmap (N, S, S, 3) (HWC), served as (3, S, S) channels-last views.

    The file is opened lazily in each process. ``__getitems__`` defers the read to the collate
    function (``read_rows``), which then knows whether the batch must land in shared memory.
    """

    def __init__(self, images_path: str | Path, labels: np.ndarray, size: int):
        self.path, self.labels, self.size = str(images_path), np.asarray(labels, dtype=np.int64), size
        self._images: np.ndarray | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_images"] = None  # never pickle the mapping: each worker maps the file itself
        return state

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(len(self.labels), self.size, self.size, 3))
        return self._images

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return hwc_to_chw(torch.from_numpy(np.array(self.images[i]))), int(self.labels[i])

    def __getitems__(self, indices) -> _Rows:
        return _Rows(self, np.asarray(indices, dtype=np.int64))

    def read_rows(self, indices: np.ndarray, shared: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, 3, S, S) channels-last and labels (B,) of ``indices``, read in file order."""
        idx = np.asarray(indices, dtype=np.int64)
        block = new_host_tensor((len(idx), self.size, self.size, 3), torch.uint8, shared=shared)
        out, images = block.numpy(), self.images
        for k in np.argsort(idx, kind="stable"):  # read in file order, hand back in sampler order; one copy
            out[k] = images[idx[k]]
        return hwc_to_chw(block), torch.from_numpy(self.labels[idx])
