"""A two-process CPU run prepares the data (builds the caches) once, and both ranks train on it."""

import json

import pytest
import pytorch_lightning as pl
import torch

from dm_helpers import toy_task
from pactmerge.datamodules import DataConfig, TaskDataModule


class _Probe(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3 * 16 * 16, 3)

    def training_step(self, batch, _):
        assert batch["images"].dtype == torch.float32  # gpu_transform ran in on_after_batch_transfer
        return torch.nn.functional.cross_entropy(self.layer(batch["images"].flatten(1)), batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def teardown(self, stage):
        # Lightning keeps a spawned worker's process group until the process exits, where gloo's
        # threads can still be joinable: the worker then aborts ("terminate called without an
        # active exception") and the parent reports it as a failed fit. Release it first.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_run_builds_each_cache_once(imagefolder, tmp_path):
    cache = tmp_path / "cache"
    dm = TaskDataModule(toy_task(str(imagefolder)),
                        DataConfig(image_size=16, batch_size=4, num_workers=0, cache_dir=str(cache), val_fraction=0.2))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(_Probe(), datamodule=dm)
    lines = [json.loads(x) for x in (cache / "builds.jsonl").read_text().splitlines()]
    assert sorted(x["split"] for x in lines) == ["test", "train", "val"]
    assert len({x["pid"] for x in lines}) == 1
