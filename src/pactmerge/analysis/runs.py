"""Evaluate encoder states on tasks of a run directory (its model, data and frozen heads).

A run directory is what ``pactmerge run`` / ``pactmerge import`` write: a checkpoint store
plus ``run.json`` (the run config). Evaluation reuses the run's ``RunContext`` (model loading,
data modules, heads). On the run's own tasks it goes through the study's evaluation path
(``ctx.evaluator()``: folded BatchNorms, inputs kept after their first pass, the config's
precision), so its accuracies are those ``pactmerge evaluate`` gives, digit for digit, and the
many states an analysis evaluates pay for decoding the data once. Other tasks (their heads built
on demand) are streamed through that same encoder and precision (``Evaluator.stream``); only
another ``device`` than the run's goes through ``evaluate_encoder``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

log = logging.getLogger(__name__)


def open_run(run_dir: str | Path):
    """The ``RunContext`` of ``run_dir`` (see ``pipeline.context.open_run_dir``); claims nothing."""
    from pactmerge.pipeline.context import open_run_dir

    return open_run_dir(run_dir)


class RunEvaluator:
    """Accuracy of encoder states on a run's tasks (heads built on demand for tasks the run lacks)."""

    def __init__(self, run_dir: str | Path, *, split: str = "test", device: str = "auto") -> None:
        self.ctx = open_run(run_dir)
        self.split = split
        self.device = device
        self._heads: dict[str, torch.Tensor] = {}

    def head(self, task: str) -> torch.Tensor:
        from pactmerge.datamodules import get_task

        info = get_task(task)
        if info.key not in self._heads:
            store = self.ctx.store
            if store.has_head(info.key):
                self._heads[info.key] = store.load_head(info.key)
            else:
                from pactmerge.pipeline.heads import build_heads

                self._heads.update(build_heads(self.ctx.loaded, [info]))
        return self._heads[info.key]

    def __call__(self, state: Mapping[str, torch.Tensor], tasks: list[str]) -> dict[str, float]:
        """Top-1 accuracy in [0, 1] per task of the run's encoder with ``state`` loaded."""
        from pactmerge.datamodules import get_task
        from pactmerge.merging import resolve_device
        from pactmerge.pipeline.evaluate import accuracy, evaluate_encoder

        keys = [get_task(t).key for t in tasks]
        study = self.ctx.evaluator()
        if resolve_device(self.device) == study.device:
            ours = [k for k in keys if k in self.ctx.task_keys]
            accs = study.accuracies(state, ours, split=self.split) if ours else {}
            others = [k for k in dict.fromkeys(keys) if k not in accs]
            if others:
                dms = self.ctx.datamodules(others)
                preds = study.stream(state, {k: self.head(k) for k in dms}, dms, split=self.split)
                accs.update({k: accuracy(p, y) for k, (p, y) in preds.items()})
            return {t: accs[k] for t, k in zip(tasks, keys)}
        loaded = self.ctx.loaded
        dms = self.ctx.datamodules(keys)
        heads = {key: self.head(key) for key in dms}
        accs = evaluate_encoder(loaded.encoder, state, heads, dms, split=self.split,
                                logit_scale=loaded.logit_scale, device=self.device)
        return {t: accs[k] for t, k in zip(tasks, keys)}

    def accuracy(self, task: str, state: Mapping[str, Any]) -> float:
        return self(state, [task])[task]
