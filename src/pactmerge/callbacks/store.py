"""``StoreEncoderCallback``: put a finished fine-tune into the checkpoint store when fitting ends.

For Trainers of your own (the study's stages store their fits themselves, once, in
``pipeline.stages``). Placed before ``MergeCallback`` in a Trainer's callbacks, it makes the
encoder just trained visible to the merge callback in the same ``on_fit_end``. A fit that
stopped early (interrupted, out of data) stores nothing; an entry already stored is kept.
The module needs an ``encoder_state_dict()`` method (``CLIPFineTuner`` has one).
"""

from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl

from pactmerge.checkpoints import CheckpointStore


class StoreEncoderCallback(pl.Callback):
    def __init__(self, store: CheckpointStore, name: str, meta: Mapping[str, Any] | None = None) -> None:
        self.store, self.name, self.meta = store, name, dict(meta or {})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.interrupted:
            return
        if trainer.max_steps > 0 and trainer.global_step < trainer.max_steps:
            return
        if not self.store.has(self.name):
            self.store.save_state(self.name, pl_module.encoder_state_dict(),
                                  {**self.meta, "steps": trainer.global_step})
