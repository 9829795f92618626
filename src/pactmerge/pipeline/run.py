"""``Study``: the run context of a config with its directory claimed, and the stages as methods.

A short composition kept for callers written against the earlier API; new code uses
``pipeline.context.RunContext`` with the functions of ``pipeline.stages``,
``pipeline.merge_stage`` and ``pipeline.study``. Unlike ``pipeline.study.open_study`` (what the
commands use), constructing a ``Study`` claims the directory at once, before the model and the
data are resolved.
"""

from __future__ import annotations

from typing import Any

from pactmerge.pipeline import merge_stage, stages
from pactmerge.pipeline.context import RunContext, claim, resolve_tasks
from pactmerge.pipeline.study import run_study

__all__ = ["Study", "resolve_tasks"]


class Study:
    def __init__(self, cfg, *, force: bool = False, config_text: str | None = None,
                 ctx: RunContext | None = None) -> None:
        self.ctx = ctx or RunContext(cfg)
        if ctx is None:
            claim(self.ctx, force=force, config_text=config_text)
        self.cfg, self.run_dir, self.tasks = self.ctx.cfg, self.ctx.run_dir, self.ctx.task_keys

    @property
    def store(self):
        return self.ctx.store

    def finetune_task(self, task: str) -> bool:
        return stages.finetune_individual(self.ctx, task)

    def finetune_joint(self) -> bool:
        return stages.finetune_joint(self.ctx)

    def finetune_sequential(self) -> bool:
        return stages.finetune_sequential(self.ctx)

    def merge(self) -> dict[str, Any]:
        return merge_stage.run_merge_stage(self.ctx)

    def evaluate(self) -> bool:
        return stages.evaluate(self.ctx)

    def report(self) -> str:
        return stages.report(self.ctx)

    def run_all(self) -> str:
        return run_study(self.ctx)
