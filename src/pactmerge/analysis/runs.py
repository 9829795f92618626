"""Evaluate encoder states on tasks of a run directory (its model, data and frozen heads).

A run directory is what ``pactmerge run`` / ``pactmerge import`` write: a checkpoint store
plus ``run.json`` (the run config). Evaluation reuses the study's own model loading, data
modules and heads, so its numbers are comparable with ``pactmerge evaluate``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from pactmerge.errors import CheckpointError, StageError

log = logging.getLogger(__name__)


def open_run(run_dir: str | Path):
    """The ``Study`` of ``run_dir`` (a run directory with ``run.json``), or ``StageError`` saying what is missing."""
    from pactmerge.pipeline.config import RunConfig, from_dict
    from pactmerge.pipeline.run import Study

    run_dir = Path(run_dir)
    info = run_dir / "run.json"
    if not info.is_file():
        raise StageError(
            f"{run_dir}: no run.json, so its model, data and heads are unknown; evaluation needs a run directory "
            "written by `pactmerge run` or `pactmerge import`"
        )
    try:
        config = json.loads(info.read_text())["config"]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{info}: unreadable run description ({exc})") from exc
    cfg = from_dict(RunConfig, config, where=str(info))
    # the directory may have moved since it was written; output_dir is not part of its identity
    cfg = dataclasses.replace(cfg, output_dir=str(run_dir))
    return Study(cfg)


class RunEvaluator:
    """Accuracy of encoder states on a run's tasks (heads built on demand for tasks the run lacks)."""

    def __init__(self, run_dir: str | Path, *, split: str = "test", device: str = "auto") -> None:
        self.study = open_run(run_dir)
        self.split = split
        self.device = device
        self._heads: dict[str, torch.Tensor] = {}

    def head(self, task: str) -> torch.Tensor:
        if task not in self._heads:
            store = self.study.store
            if store.has_head(task):
                self._heads[task] = store.load_head(task)
            else:
                from pactmerge.datamodules import get_task
                from pactmerge.pipeline.heads import build_heads

                self._heads.update(build_heads(self.study.loaded, [get_task(task)]))
        return self._heads[task]

    def __call__(self, state: Mapping[str, torch.Tensor], tasks: list[str]) -> dict[str, float]:
        """Top-1 accuracy in [0, 1] per task of the run's encoder with ``state`` loaded."""
        from pactmerge.pipeline.evaluate import evaluate_encoder

        loaded = self.study.loaded
        heads = {t: self.head(t) for t in tasks}
        dms = {t: self.study.datamodule(t) for t in tasks}
        return evaluate_encoder(loaded.encoder, state, heads, dms, split=self.split,
                                logit_scale=loaded.logit_scale, device=self.device)

    def accuracy(self, task: str, state: Mapping[str, Any]) -> float:
        return self(state, [task])[task]
