"""``MergeCallback``: run a study's merge stage when a fit ends, once every fine-tune exists.

A thin Lightning adapter around ``pactmerge.pipeline.merge_stage.run_merge_stage`` (the one
entry point of merging), shaped like Lightning's ``WeightAveraging`` callback: its state (the
finished merges, with their manifest entries) is read from the store in ``setup``, the work runs
in ``on_fit_end`` on global rank zero only, and ``state_dict`` / ``load_state_dict`` carry the
state across a resumed fit. The checkpoint store is the durable record: a merge already stored
is never recomputed. Put a ``StoreEncoderCallback`` before it when the fit itself produces the
last fine-tune.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import pytorch_lightning as pl

from pactmerge.pipeline.context import RunContext
from pactmerge.pipeline.merge_stage import PlannedMerge, missing_finetunes, plan_merges, run_merge_stage, stored_results

log = logging.getLogger(__name__)


class MergeCallback(pl.Callback):
    """Merge ``ctx``'s individual fine-tunes with every planned merge when fitting ends.

    Args:
        ctx: the run context (config, store, model, data, heads).
        merges: the merges to build (default: ``plan_merges(ctx.cfg.merge)``).
    """

    def __init__(self, ctx: RunContext, merges: Sequence[PlannedMerge] | None = None) -> None:
        self.ctx = ctx
        self.merges = list(plan_merges(ctx.cfg.merge) if merges is None else merges)
        self._results: dict[str, dict[str, Any]] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._results.update(stored_results(self.ctx, self.merges))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        missing = missing_finetunes(self.ctx)
        if missing:
            log.info("merge callback: waiting for the fine-tunes of %s", ", ".join(missing))
            return
        self._results.update(run_merge_stage(self.ctx, self.merges))

    def state_dict(self) -> dict[str, Any]:
        return {"results": dict(self._results)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._results.update(state_dict.get("results", {}))

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        """id -> manifest entry of every merge finished so far."""
        return dict(self._results)
