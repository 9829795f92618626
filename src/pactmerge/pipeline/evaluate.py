"""Evaluation of image encoders with frozen per-task heads: top-1 accuracy per task.

Metrics follow the specification: per-task top-1 accuracy, the absolute average over tasks,
and the normalized accuracy (accuracy ÷ the task's individually fine-tuned accuracy,
averaged over tasks).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Mapping

import numpy as np
import torch
from torch import nn

from pactmerge.merging import resolve_device
from pactmerge.pipeline.heads import head_logits

log = logging.getLogger(__name__)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_encoder(
    encoder: nn.Module,
    state: Mapping[str, torch.Tensor] | None,
    heads: Mapping[str, torch.Tensor],
    datamodules: Mapping[str, object],
    *,
    split: str = "test",
    logit_scale: float = 100.0,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, float]:
    """Top-1 accuracy in [0, 1] of ``encoder`` (with ``state`` loaded when given) for every task.

    ``heads[task]`` is the frozen (C, D) classifier; ``datamodules[task]`` a set-up
    ``TaskDataModule`` whose ``val_dataloader`` / ``test_dataloader`` yields
    ``{"images", "labels", "task"}`` batches and whose ``gpu_transform`` finishes them on the
    device. On CUDA the forward pass runs under bf16 autocast.
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    dev = resolve_device(device)
    if state is not None:
        encoder.load_state_dict(dict(state), strict=True)
    was_training = encoder.training
    encoder.to(dev).eval()
    results: dict[str, float] = {}
    try:
        for task, dm in datamodules.items():
            head = heads[task].to(dev, torch.float32)
            loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
            if progress:
                from tqdm.auto import tqdm

                loader = tqdm(loader, desc=f"eval {task} ({split})", leave=False)
            correct = total = 0
            for batch in loader:
                batch = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
                batch = dm.gpu_transform(batch, train=False)
                with _autocast(dev):
                    feats = encoder(batch["images"])
                logits = head_logits(feats.float(), head, logit_scale)
                correct += (logits.argmax(-1) == batch["labels"]).sum().item()
                total += batch["labels"].numel()
            if total == 0:
                raise ValueError(f"task {task!r}: the {split} split is empty")
            results[task] = correct / total
    finally:
        encoder.train(was_training)
    return results


def summarize(accs: Mapping[str, float], reference: Mapping[str, float] | None = None) -> dict[str, float | None]:
    """Absolute average and (given the individual fine-tuned accuracies) normalized accuracy, in [0, 1]."""
    tasks = list(accs)
    out: dict[str, float | None] = {"avg_absolute": sum(accs.values()) / len(tasks) if tasks else float("nan")}
    if reference and all(t in reference and reference[t] > 0 for t in tasks):
        out["avg_normalized"] = sum(accs[t] / reference[t] for t in tasks) / len(tasks)
    else:
        out["avg_normalized"] = None
    return out


class SplitSubset:
    """A fixed, seeded subset of one split of a set-up ``TaskDataModule``, usable wherever
    ``evaluate_encoder`` takes a data module (it has ``val_dataloader`` / ``test_dataloader``
    and ``gpu_transform``). ``size`` examples are drawn without replacement by
    ``numpy.random.default_rng(seed)`` from the split's positions and kept in sorted order;
    a split of at most ``size`` examples is used whole. ``complement=True`` gives the other
    examples of the split instead (the subset and its complement partition the split).
    """

    def __init__(self, dm, split: str, size: int, seed: int, *, complement: bool = False) -> None:
        from torch.utils.data import Subset

        role = "val" if split == "val" else "test"
        if role not in dm.datasets:
            dm.setup()
        dataset = dm.datasets[role]
        n = len(dataset)
        if size >= n:
            chosen = list(range(n))
        else:
            chosen = sorted(np.random.default_rng(seed).choice(n, size=size, replace=False).tolist())
        if complement:
            taken = set(chosen)
            chosen = [i for i in range(n) if i not in taken]
        self.indices = chosen
        self.dm, self.split, self.dataset = dm, split, Subset(dataset, self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def _loader(self):
        from torch.utils.data import DataLoader

        cfg = self.dm.config
        return DataLoader(self.dataset, batch_size=cfg.eval_batch_size, shuffle=False, num_workers=cfg.num_workers,
                          collate_fn=self.dm.collate_fn(False), pin_memory=torch.cuda.is_available(),
                          persistent_workers=cfg.num_workers > 0, drop_last=False)

    def val_dataloader(self):
        return self._loader()

    def test_dataloader(self):
        return self._loader()

    def gpu_transform(self, batch: dict, train: bool) -> dict:
        return self.dm.gpu_transform(batch, train)
