"""Map-style torch datasets over a raw split, and the collate function of task batches.

Every loader yields ``{"images": Tensor (B, 3, H, W), "labels": LongTensor (B,), "task": str}``;
images are uint8 on the tensor/cached paths and float (model transform output) on the PIL path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pactmerge.datamodules.readers import RawSplit
from pactmerge.datamodules.transforms import resize_center_crop


class _Batch(tuple):
    """A batch fetched in one read by ``__getitems__`` (images, labels); TaskCollate passes it through."""


class TaskCollate:
    """Stack samples (image, label) into a task batch dict; picklable for worker processes."""

    def __init__(self, task: str):
        self.task = task

    def __call__(self, samples) -> dict:
        if isinstance(samples, _Batch):
            images, labels = samples
        else:
            images = torch.stack([s[0] for s in samples])
            labels = torch.as_tensor([int(s[1]) for s in samples], dtype=torch.long)
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
    """Decode and resize to uint8 (3, S, S) on every access (the tensor path without a cache)."""

    def __init__(self, raw: RawSplit, indices: np.ndarray, size: int):
        self.raw, self.indices, self.size = raw, np.asarray(indices, dtype=np.int64), size

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.raw.labels[self.indices]

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        return torch.from_numpy(resize_center_crop(self.raw.load(j), self.size)), int(self.raw.labels[j])


class CachedDataset(Dataset):
    """Rows of a pre-decoded uint8 memmap (N, 3, S, S); the file is opened lazily in each process."""

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
            self._images = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(len(self.labels), 3, self.size, self.size))
        return self._images

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.array(self.images[i])), int(self.labels[i])

    def __getitems__(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # read in file order, hand back in sampler order
        block = np.empty((len(idx), 3, self.size, self.size), dtype=np.uint8)
        block[order] = self.images[idx[order]]
        return _Batch((torch.from_numpy(block), torch.from_numpy(self.labels[idx])))
