"""Evaluation of image encoders with frozen per-task heads: predictions and top-1 accuracy per task.

Metrics follow the specification: per-task top-1 accuracy, the absolute average over tasks,
and the normalized accuracy (accuracy ÷ the task's individually fine-tuned accuracy,
averaged over tasks).

One path: ``predict_encoder`` classifies every example of a split (or of a seeded subset);
``evaluate_encoder`` reduces its predictions to accuracies. Inside a study, ``Evaluator`` (one
per ``RunContext``, ``ctx.evaluator()``) serves both the α search (validation split) and the
evaluate stage (test split): it keeps every task's finished inputs of a split (decoded, resized,
normalised) in one tensor after their first pass, so every later evaluation of that split only
runs the encoder, in full batches across tasks, with its BatchNorms folded into the convolutions
(``pipeline.fold``); other data (inputs over its budget, tasks outside the run) is streamed
through that same encoder (``Evaluator.stream``). The evaluate stage writes each model's test
predictions to ``RUN_DIR/predictions/<entry with '/' -> '__'>.npz`` (``pred__<task>``,
``label__<task>``: int16 in split order), read back by ``load_predictions``.

Precision (``merge.eval_precision``): ``bf16`` runs the encoder's forward pass under bf16
autocast (heads and the argmax in float32); ``auto`` means bf16 on CUDA and on CPUs with native
bf16 instructions (``avx512_bf16`` / ``amx_bf16``), float32 elsewhere. On the CPU the encoder
and its inputs are channels-last during an evaluation (oneDNN's fast layout for convolutions).
docs/reproducibility.md says what bf16 does to the digits.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from pactmerge.merging import resolve_device
from pactmerge.pipeline.heads import head_logits

log = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
INPUT_CACHE_BYTES = 1 << 30  # finished input batches an Evaluator keeps (beyond: re-read from the loaders)
PRECISIONS = ("auto", "32", "bf16")


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (Linux ``/proc/cpuinfo`` flags; False when unknown)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"32"`` or ``"bf16"`` for ``precision`` (``auto``: see the module docstring) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"evaluation precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()) else "32"


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def finished_batches(dm: Any, split: str, device: torch.device) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches of ``dm``'s ``split`` (``val``/``test``) on ``device``, finished by its
    ``gpu_transform``, in split order; channels-last on the CPU."""
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    for batch in loader:
        batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        batch = dm.gpu_transform(batch, train=False)
        images = batch["images"]
        if device.type == "cpu" and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images, batch["labels"]


@torch.no_grad()
def predict_encoder(
    encoder: nn.Module,
    state: Mapping[str, torch.Tensor] | None,
    heads: Mapping[str, torch.Tensor],
    datamodules: Mapping[str, object],
    *,
    split: str = "test",
    logit_scale: float = 100.0,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Task -> (predicted class, true label) per example of ``split``, in split order (int64 arrays),
    for ``encoder`` (with ``state`` loaded when given).

    ``heads[task]`` is the frozen (C, D) classifier; ``datamodules[task]`` a set-up ``TaskDataModule``
    (``val_dataloader`` / ``test_dataloader`` yielding ``{"images", "labels", "task"}`` batches that
    its ``gpu_transform`` finishes on the device) or a ``SplitSubset``.
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if state is not None:
        encoder.load_state_dict(dict(state), strict=True)
    was_training = encoder.training
    channels_last = dev.type == "cpu"
    encoder.to(dev).eval()
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    try:
        return stream_predictions(encoder, heads, datamodules, split=split, logit_scale=logit_scale, device=dev,
                                  precision=prec, progress=progress)
    finally:
        if channels_last:
            encoder.to(memory_format=torch.contiguous_format)
        encoder.train(was_training)


@torch.no_grad()
def stream_predictions(module: nn.Module, heads: Mapping[str, torch.Tensor], datamodules: Mapping[str, object], *,
                       split: str, logit_scale: float, device: torch.device, precision: str, progress: bool = False
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``predict_encoder``'s loop: ``module`` as it is (on ``device``, in eval mode, its memory layout
    untouched) over each data module's finished batches of ``split``."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for task, dm in datamodules.items():
        head = heads[task].to(device, torch.float32)
        batches = finished_batches(dm, split, device)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"eval {task} ({split})", leave=False)
        preds, labels = [], []
        for images, y in batches:
            with _autocast(device, precision):
                feats = module(images)
            preds.append(head_logits(feats.float(), head, logit_scale).argmax(-1).cpu())
            labels.append(y.cpu())
        if not labels or sum(len(y) for y in labels) == 0:
            raise ValueError(f"task {task!r}: the {split} split is empty")
        out[task] = (torch.cat(preds).numpy(), torch.cat(labels).numpy())
    return out


def accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]: correct predictions over examples."""
    return int((np.asarray(pred) == np.asarray(label)).sum()) / len(label)


def evaluate_encoder(encoder: nn.Module, state: Mapping[str, torch.Tensor] | None, heads: Mapping[str, torch.Tensor],
                     datamodules: Mapping[str, object], **kwargs: Any) -> dict[str, float]:
    """Top-1 accuracy in [0, 1] per task: ``predict_encoder`` (same arguments) reduced by ``accuracy``."""
    preds = predict_encoder(encoder, state, heads, datamodules, **kwargs)
    return {task: accuracy(p, y) for task, (p, y) in preds.items()}


def summarize(accs: Mapping[str, float], reference: Mapping[str, float] | None = None) -> dict[str, float | None]:
    """Absolute average and (given the individual fine-tuned accuracies) normalized accuracy, in [0, 1]."""
    tasks = list(accs)
    out: dict[str, float | None] = {"avg_absolute": sum(accs.values()) / len(tasks) if tasks else float("nan")}
    if reference and all(t in reference and reference[t] > 0 for t in tasks):
        out["avg_normalized"] = sum(accs[t] / reference[t] for t in tasks) / len(tasks)
    else:
        out["avg_normalized"] = None
    return out


class PooledSplit:
    """The finished images of every task's split (or subset, or complement), task after task in one
    tensor (``images``), with each task's labels and its span ``[start, stop)`` of rows."""

    def __init__(self, parts: Mapping[str, list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        images, self.labels, self.spans, start = [], {}, {}, 0
        for task, batches in parts.items():
            n = sum(len(y) for _, y in batches)
            self.spans[task] = (start, start + n)
            self.labels[task] = torch.cat([y for _, y in batches]) if batches else torch.zeros(0, dtype=torch.long)
            images += [x for x, _ in batches]
            start += n
        self.images = torch.cat(images) if images else torch.zeros(0)
        self.nbytes = self.images.nbytes + sum(y.nbytes for y in self.labels.values())

    def size(self, task: str) -> int:
        start, stop = self.spans[task]
        return stop - start


class Evaluator:
    """The evaluation path of a study (see the module docstring): ``predictions`` / ``accuracies`` of an
    encoder state on tasks of the run, on a split or on a seeded subset of it (``subset`` examples
    per task, as ``SplitSubset`` draws them with the run's seed).

    Each (split, subset) of every task is read once and kept as a ``PooledSplit`` while the kept
    inputs fit ``cache_bytes``; an evaluation then runs the encoder over that one tensor in batches of
    the data config's ``eval_batch_size`` that cross task boundaries (a task with a small split
    does not get a small, slow batch of its own), and applies each task's head to its rows. The
    encoder is a ``FoldedEncoder`` (BatchNorms folded into the convolutions, checked once on a probe
    batch), channels-last on the CPU. Inputs over the budget are streamed from the data modules
    through the same encoder instead (``stream``, which also serves tasks outside the run).
    """

    def __init__(self, ctx: Any, *, cache_bytes: int = INPUT_CACHE_BYTES) -> None:
        self.ctx = ctx
        self.device = resolve_device(ctx.cfg.merge.device)
        self.precision = resolve_precision(getattr(ctx.cfg.merge, "eval_precision", "auto"), self.device)
        self.cache_bytes = cache_bytes
        self._pooled: dict[tuple[str, int | None, bool], PooledSplit | None] = {}
        self._encoder: Any = None

    def _source(self, task: str, split: str, subset: int | None, complement: bool) -> Any:
        dm = self.ctx.datamodule(task)
        return dm if subset is None else SplitSubset(dm, split, subset, self.ctx.cfg.seed, complement=complement)

    def pooled(self, split: str, subset: int | None = None, complement: bool = False) -> PooledSplit | None:
        """Every task's examples of ``split`` (or subset, or the subset's complement) as one
        ``PooledSplit``; None when they do not fit the cache (they are streamed instead). Splits
        that cannot fit (their example count times the input size, at 2 bytes a value) are never
        read for the pool; the others are read and measured."""
        key = (split, subset, complement)
        if key not in self._pooled:
            used = sum(p.nbytes for p in self._pooled.values() if p is not None)
            side = int(self.ctx.loaded.image_size)
            least = sum(self._length(t, split, subset, complement) for t in self.ctx.task_keys) * 3 * side * side * 2
            if used + 2 * least > self.cache_bytes:  # over the budget even at 2 bytes a value: never read
                self._pooled[key] = None
                return None
            parts, nbytes = {}, 0
            for task in self.ctx.task_keys:
                parts[task] = list(finished_batches(self._source(task, split, subset, complement), split, self.device))
                nbytes += sum(x.nbytes + y.nbytes for x, y in parts[task])
                if used + 2 * nbytes > self.cache_bytes:  # the pooled copy is made while the parts exist
                    parts = None
                    break
            self._pooled[key] = PooledSplit(parts) if parts is not None else None
        return self._pooled[key]

    def _length(self, task: str, split: str, subset: int | None, complement: bool) -> int:
        if subset is not None:
            return len(self._source(task, split, subset, complement))
        dm = self.ctx.datamodule(task)
        if split not in dm.datasets:
            dm.setup()
        return len(dm.datasets[split])

    def count(self, task: str, split: str, subset: int | None = None, complement: bool = False) -> int:
        """How many examples of ``task``'s ``split`` (subset, complement) an evaluation sees."""
        pooled = self.pooled(split, subset, complement)
        return pooled.size(task) if pooled is not None else self._length(task, split, subset, complement)

    def encoder(self) -> Any:
        """The ``FoldedEncoder`` of the run's encoder, on the evaluation device (built on first use)."""
        if self._encoder is None:
            from pactmerge.pipeline.fold import FoldedEncoder

            loaded = self.ctx.loaded
            gen = torch.Generator().manual_seed(0)
            probe = torch.randn(2, 3, loaded.image_size, loaded.image_size, generator=gen)
            folded = FoldedEncoder(loaded.encoder, probe)
            if not folded.folded:  # a private copy: the run's encoder is left as it is
                folded.module = copy.deepcopy(loaded.encoder)
            folded.module.to(self.device).eval()
            if self.device.type == "cpu":
                folded.module.to(memory_format=torch.channels_last)
            self._encoder = folded
        return self._encoder

    def encoder_at(self, state: Mapping[str, torch.Tensor] | None) -> nn.Module:
        """The evaluation encoder (``encoder().module``) loaded with ``state`` (None: the run's
        pre-trained encoder). One module serves every call: the next call replaces its weights."""
        enc = self.encoder()
        enc.load(self.ctx.loaded.encoder.state_dict() if state is None else state)
        return enc.module

    @torch.no_grad()
    def _run_pooled(self, state: Mapping[str, torch.Tensor] | None, pooled: PooledSplit, keys: list[str]
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        module = self.encoder_at(state)
        heads, scale = self.ctx.heads(), self.ctx.loaded.logit_scale
        batch = max(1, int(self.ctx.cfg.data.eval_batch_size))
        # runs of consecutive tasks: one pass over their rows, batches crossing task boundaries
        runs: list[list[str]] = []
        for t in keys:
            if runs and pooled.spans[runs[-1][-1]][1] == pooled.spans[t][0]:
                runs[-1].append(t)
            else:
                runs.append([t])
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for run in runs:
            start, stop = pooled.spans[run[0]][0], pooled.spans[run[-1]][1]
            feats = []
            with _autocast(self.device, self.precision):  # one context: the weights are cast once per pass
                for i in range(start, stop, batch):
                    feats.append(module(pooled.images[i:min(i + batch, stop)]).float())
            feats = torch.cat(feats) if feats else torch.zeros(0)
            for t in run:
                a, b = pooled.spans[t]
                head = heads[t].to(self.device, torch.float32)
                pred = head_logits(feats[a - start:b - start], head, scale).argmax(-1).cpu()
                out[t] = (pred.numpy(), pooled.labels[t].cpu().numpy())
        return out

    def predictions(self, state: Mapping[str, torch.Tensor] | None, tasks: Iterable[str] | None = None,
                    split: str = "test", subset: int | None = None, *, complement: bool = False
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Task -> (pred, label) per example, in split order; tasks whose subset complement is empty
        are left out."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        keys = self.ctx.task_keys if tasks is None else list(tasks)
        pooled = self.pooled(split, subset, complement)
        if pooled is not None:
            keys = [t for t in keys if pooled.size(t)]
            return self._run_pooled(state, pooled, keys) if keys else {}
        heads = self.ctx.heads()
        data = {t: self._source(t, split, subset, complement) for t in keys}
        data = {t: d for t, d in data.items() if not hasattr(d, "__len__") or len(d)}
        return self.stream(state, {t: heads[t] for t in data}, data, split) if data else {}

    def stream(self, state: Mapping[str, torch.Tensor] | None, heads: Mapping[str, torch.Tensor],
               datamodules: Mapping[str, object], split: str = "test") -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Task -> (pred, label) of ``state`` through this path's encoder and precision, for any set-up data
        modules (tasks outside the run included) and their heads, streamed batch by batch, nothing kept."""
        return stream_predictions(self.encoder_at(state), heads, datamodules, split=split,
                                  logit_scale=self.ctx.loaded.logit_scale, device=self.device,
                                  precision=self.precision)

    def accuracies(self, state: Mapping[str, torch.Tensor] | None, tasks: Iterable[str] | None = None,
                   split: str = "test", subset: int | None = None) -> dict[str, float]:
        return {t: accuracy(p, y) for t, (p, y) in self.predictions(state, tasks, split, subset).items()}


# -- per-example predictions in the run directory ---------------------------------------------------
def predictions_path(run_dir: str | Path, entry: str) -> Path:
    return Path(run_dir) / PREDICTIONS_DIR / f"{entry.replace('/', '__')}.npz"


def save_predictions(run_dir: str | Path, entry: str, preds: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write ``preds`` (task -> (pred, label)) as ``predictions/<entry>.npz`` (int16 arrays), atomically."""
    import io

    from pactmerge.fileio import write_bytes_atomic

    arrays = {}
    for task, (pred, label) in preds.items():
        arrays[f"pred__{task}"] = np.asarray(pred).astype(np.int16)
        arrays[f"label__{task}"] = np.asarray(label).astype(np.int16)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path = predictions_path(run_dir, entry)
    write_bytes_atomic(path, buf.getvalue())
    return path


def load_predictions(run_dir: str | Path, entry: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Task -> (predicted class, true label) per test example of ``entry`` (``pretrained``,
    ``finetuned/<t>``, ``joint``, ``sequential``, ``merged/<id>``), as the evaluate stage wrote them.
    ``FileNotFoundError`` naming the file when that entry has not been evaluated."""
    path = predictions_path(run_dir, entry)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions of {entry!r}; run `pactmerge evaluate CONFIG` first")
    with np.load(path) as data:
        tasks = [k.split("__", 1)[1] for k in data.files if k.startswith("pred__")]
        return {t: (data[f"pred__{t}"], data[f"label__{t}"]) for t in tasks}


def subset_positions(n: int, size: int, seed: int, *, complement: bool = False) -> list[int]:
    """The positions ``SplitSubset`` takes from a split of ``n`` examples: ``size`` of them drawn
    without replacement by ``numpy.random.default_rng(seed)``, sorted (all of them when
    ``size >= n``); with ``complement``, the other positions."""
    if size >= n:
        chosen = list(range(n))
    else:
        chosen = sorted(np.random.default_rng(seed).choice(n, size=size, replace=False).tolist())
    if complement:
        taken = set(chosen)
        chosen = [i for i in range(n) if i not in taken]
    return chosen


class SplitSubset:
    """A fixed, seeded subset of one split of a set-up ``TaskDataModule``, usable wherever
    ``predict_encoder`` takes a data module (it has ``val_dataloader`` / ``test_dataloader``
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
        self.indices = subset_positions(len(dataset), size, seed, complement=complement)
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
