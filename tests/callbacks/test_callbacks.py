"""The callbacks under real Lightning Trainers: ``StoreEncoderCallback`` stores a finished fit only;
``MergeCallback`` waits for the fine-tunes, then runs the merge stage when a fit ends, carries its
results in Lightning checkpoints, and never recomputes a merge the store already holds."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel

from pactmerge.callbacks import MergeCallback, StoreEncoderCallback
from pactmerge.checkpoints import CheckpointStore
from pactmerge.errors import StageError
from pactmerge.pipeline import stages
from pactmerge.pipeline.config import load_config
from pactmerge.pipeline.merge_stage import run_merge_stage
from pactmerge.pipeline.study import open_study


class _Encoder(BoringModel):
    def encoder_state_dict(self):
        return {k: v.detach().clone() for k, v in self.state_dict().items()}


def _trainer(tmp_path, callbacks, **kw) -> pl.Trainer:
    kw.setdefault("fast_dev_run", True)
    return pl.Trainer(default_root_dir=tmp_path, callbacks=callbacks, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", **kw)


def test_store_encoder_callback_stores_a_finished_fit_only(tmp_path):
    store = CheckpointStore(tmp_path / "store")
    _trainer(tmp_path, [StoreEncoderCallback(store, "finetuned/short")], fast_dev_run=False, max_steps=4,
             limit_val_batches=0, enable_checkpointing=False).fit(_Encoder())
    assert store.entry("finetuned/short")["steps"] == 4
    assert set(store.load_state("finetuned/short")) == {"layer.weight", "layer.bias"}

    stop = _trainer(tmp_path, [StoreEncoderCallback(store, "finetuned/cut")], fast_dev_run=False, max_steps=50,
                    limit_train_batches=2, max_epochs=1, limit_val_batches=0, enable_checkpointing=False)
    stop.fit(_Encoder())  # ran out of epochs at step 2 of 50: not a finished fine-tune
    assert not store.has("finetuned/cut")


@pytest.mark.slow
def test_merge_callback_waits_merges_and_resumes(tiny_config, tmp_path):
    path = tiny_config(merge={"methods": ["task_arithmetic", "iso_c"], "pact": ["none", "exact"],
                              "pact_params": {"K": 4, "k": 2}, "alpha_grid": [0.5, 1.5, 2.5]},
                       comparisons={"joint": False, "sequential": False})
    ctx = open_study(load_config(path))
    cb = MergeCallback(ctx)
    with pytest.raises(StageError, match="digits, faces"):
        run_merge_stage(ctx)
    _trainer(tmp_path, [cb]).fit(BoringModel())  # nothing to merge yet: the callback waits
    assert cb.results == {}

    stages.finetune_individual(ctx, "digits")
    stages.finetune_individual(ctx, "faces")
    trainer = _trainer(tmp_path, [cb])
    trainer.fit(BoringModel())
    results = cb.results
    assert sorted(results) == sorted(["task_arithmetic", "pact+task_arithmetic", "iso_c", "pact+iso_c"])
    for entry in results.values():
        assert set(entry["metrics"]["test"]) == {"digits", "faces"}
        assert entry["alpha_search"]["evaluations"] == 3  # the configured grid, searched whole
        assert sorted(map(float, entry["alpha_search"]["curve"])) == [0.5, 1.5, 2.5]
        assert entry["alpha"] in (0.5, 1.5, 2.5)
    assert results["pact+iso_c"]["pact_params"]["K"] == 4 and results["iso_c"]["pact_params"] is None
    assert "K" not in results["pact+iso_c"]["params"]  # method and PACT parameters recorded apart

    # a Lightning checkpoint carries the callback's state; a restored callback knows every result
    ckpt = tmp_path / "cb.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    restored = MergeCallback(ctx)
    restored.load_state_dict(next(v for k, v in saved.items() if "MergeCallback" in k))
    assert restored.results == results

    # a fresh callback reads the finished merges from the store when fitting starts and redoes none
    files = {n: ctx.store.path(f"merged/{n}").stat().st_mtime_ns for n in results}
    fresh = MergeCallback(ctx)
    _trainer(tmp_path, [fresh]).fit(BoringModel())
    assert sorted(fresh.results) == sorted(results)
    assert {n: ctx.store.path(f"merged/{n}").stat().st_mtime_ns for n in results} == files
