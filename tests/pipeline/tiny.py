"""Tiny CPU fixtures for pipeline tests: a small open_clip ViT config and real offline images.

Data modules here follow the pactmerge batch contract ({"images", "labels", "task"}) with
real images (scikit-learn digits, Debian Fashion-MNIST) at 32x32, normalised with mean/std 0.5.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # ddp_worker.py runs as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fixtures import TINY_VIT, tiny_vit_config as write_tiny_config  # noqa: E402,F401 (the shared tiny ViT)

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _to_images(x: np.ndarray) -> torch.Tensor:
    """(N, h, w) in [0, 1] -> (N, 3, 32, 32) normalised with mean/std 0.5."""
    t = torch.as_tensor(x, dtype=torch.float32)[:, None]
    t = F.interpolate(t, size=32, mode="bilinear", align_corners=False)
    return ((t - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()


def digits_arrays(n_train: int = 1200, n_val: int = 300):
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = _to_images(d.images / 16.0), torch.as_tensor(d.target, dtype=torch.long)
    return (x[:n_train], y[:n_train]), (x[n_train:n_train + n_val], y[n_train:n_train + n_val])


def fashion_arrays(n_train: int = 600, n_val: int = 200):
    def idx(name: str, offset: int) -> np.ndarray:
        with gzip.open(FASHION / name) as fh:
            return np.frombuffer(fh.read(), dtype=np.uint8, offset=offset)

    n = n_train + n_val
    x = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:n] / 255.0
    y = torch.as_tensor(idx("train-labels-idx1-ubyte.gz", 8)[:n].astype(np.int64))
    x = _to_images(x)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


ARRAYS = {"digits": digits_arrays, "fashion_mnist": fashion_arrays}


def task_info(key: str) -> SimpleNamespace:
    names = [str(i) for i in range(10)]
    return SimpleNamespace(key=key, display_name=key, classnames=names, templates=["a photo of {}.", "{}"])


def _dictify(task: str):
    def collate(items):
        x, y = torch.utils.data.default_collate(items)
        return {"images": x, "labels": y, "task": task}

    return collate


class ArrayTaskDataModule(pl.LightningDataModule):
    """One task; shuffled training batches (seeded by the global torch RNG, like a default DataLoader)."""

    def __init__(self, task: str = "digits", batch_size: int = 32, eval_batch_size: int = 100, **sizes) -> None:
        super().__init__()
        self.task, self.batch_size, self.eval_batch_size = task, batch_size, eval_batch_size
        (self.xt, self.yt), (self.xv, self.yv) = ARRAYS[task](**sizes)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.xt, self.yt), batch_size=self.batch_size, shuffle=True,
                          drop_last=True, collate_fn=_dictify(self.task))

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.xv, self.yv), batch_size=self.eval_batch_size,
                          collate_fn=_dictify(self.task))


class _RoundRobin:
    def __init__(self, loaders):
        self.loaders = loaders

    def __len__(self):
        return min(len(dl) for dl in self.loaders) * len(self.loaders)

    def __iter__(self):
        its = [iter(dl) for dl in self.loaders]
        for _ in range(min(len(dl) for dl in self.loaders)):
            for it in its:
                yield next(it)


class ArrayMultiTaskDataModule(pl.LightningDataModule):
    """Several tasks; one task per training batch (alternating); val: one loader per task."""

    def __init__(self, modules: list[ArrayTaskDataModule]) -> None:
        super().__init__()
        self.modules = modules
        self.tasks = [m.task for m in modules]

    def train_dataloader(self):
        return _RoundRobin([m.train_dataloader() for m in self.modules])

    def val_dataloader(self):
        return [m.val_dataloader() for m in self.modules]


class ArraySchedule:
    def __init__(self, modules: list[ArrayTaskDataModule]) -> None:
        self.modules = modules
        self.order = [m.task for m in modules]


@torch.no_grad()
def accuracy(encoder, head, x, y, logit_scale: float = 100.0) -> float:
    from pactmerge.pipeline.heads import head_logits

    encoder.eval()
    return (head_logits(encoder(x), head, logit_scale).argmax(-1) == y).float().mean().item()
