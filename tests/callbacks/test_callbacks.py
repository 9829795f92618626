"""The callbacks under real Lightning Trainers: ``StoreEncoderCallback`` stores a finished fit only;
``MergeCallback`` merges a user's own module with given fine-tunes when training ends, and keeps its
pre-trained snapshot across a resumed fit."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel

from pactmerge.callbacks import MergeCallback, StoreEncoderCallback
from pactmerge.checkpoints import CheckpointStore
from pactmerge.errors import ConfigError
from pactmerge.fileio import save_safetensors_atomic


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


class _Classifier(pl.LightningModule):
    """A user's own small module: an encoder (the merged part) and a fixed head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))
        self.head = torch.nn.Linear(4, 3)
        self.head.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.head(self.encoder(x)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.encoder.parameters(), lr=0.5)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, 6, generator=g)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 1)),
                                           batch_size=16)


def _other_finetunes(module: _Classifier, n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [{k: v.detach() + 0.1 * torch.randn(v.shape, generator=g) for k, v in module.encoder.state_dict().items()}
            for _ in range(n)]


def _fit(tmp_path, cb, steps, **kw):
    trainer = _trainer(tmp_path, [cb], fast_dev_run=False, max_steps=steps, limit_val_batches=0, **kw)
    return trainer


def test_merge_callback_in_a_plain_trainer_installs_the_merge(tmp_path):
    model = _Classifier()
    theta0 = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}
    head0 = model.head.weight.detach().clone()
    others = _other_finetunes(model, 2)
    files = []
    for i, sd in enumerate(others):
        files.append(tmp_path / f"ft{i}.safetensors")
        save_safetensors_atomic(files[-1], sd)

    cb = MergeCallback(finetuned=[files[0], others[1]], method="task_arithmetic", alpha=0.3, attr="encoder")
    trained_holder = {}

    class _Spy(pl.Callback):  # records the fine-tune just before the merge callback replaces it
        def on_train_end(self, trainer, pl_module):
            trained_holder.update({k: v.detach().clone() for k, v in pl_module.encoder.state_dict().items()})

    trainer = _trainer(tmp_path, [_Spy(), cb], fast_dev_run=False, max_steps=6, limit_val_batches=0,
                       enable_checkpointing=False)
    trainer.fit(model)
    trained = trained_holder
    assert any(not torch.equal(trained[k], theta0[k]) for k in theta0)  # the fit trained
    for k, v in model.encoder.state_dict().items():  # hand-computed task arithmetic: θ0 + α Σ (θt − θ0)
        expected = theta0[k] + 0.3 * ((trained[k] - theta0[k]) + (others[0][k] - theta0[k]) + (others[1][k] - theta0[k]))
        torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.head.weight, head0)  # only ``attr`` is merged
    assert cb.result.method == "task_arithmetic"


def test_merge_callback_with_pact_equals_the_core(tmp_path):
    model = _Classifier()
    theta0 = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}
    others = _other_finetunes(model, 3)
    cb = MergeCallback(finetuned=others, method="ties", params={"k": 0.5}, pact={"K": 2, "k": 1}, attr="encoder")
    _trainer(tmp_path, [cb], fast_dev_run=False, max_steps=3, limit_val_batches=0, enable_checkpointing=False).fit(model)
    assert cb.method == "pact+ties" and cb.result.pact_params["K"] == 2
    assert set(cb.pretrained) == set(theta0) and all(torch.equal(cb.pretrained[k], theta0[k]) for k in theta0)


def test_merge_callback_keeps_its_snapshot_across_a_resumed_fit(tmp_path):
    model = _Classifier()
    theta0 = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}
    others = _other_finetunes(model, 1)
    first = _trainer(tmp_path, [MergeCallback(others, "task_arithmetic", alpha=1.0, attr="encoder")],
                     fast_dev_run=False, max_steps=2, limit_val_batches=0, enable_checkpointing=False)
    first.fit(model)
    ckpt = tmp_path / "mid.ckpt"
    first.save_checkpoint(ckpt)

    resumed_model = _Classifier()
    with torch.no_grad():  # the resumed module starts from other weights than θ0
        for p in resumed_model.encoder.parameters():
            p.add_(1.0)
    cb = MergeCallback(others, "task_arithmetic", alpha=1.0, attr="encoder")
    _trainer(tmp_path, [cb], fast_dev_run=False, max_steps=4, limit_val_batches=0,
             enable_checkpointing=False).fit(resumed_model, ckpt_path=ckpt)
    assert all(torch.equal(cb.pretrained[k], theta0[k]) for k in theta0)  # the first fit's θ0, restored


def test_merge_callback_bad_arguments_are_named(tmp_path):
    with pytest.raises(ConfigError, match="at least one"):
        MergeCallback([], "ties")
    cb = MergeCallback([{}], "ties", attr="backbone")
    with pytest.raises(ConfigError, match="backbone"):
        _trainer(tmp_path, [cb], fast_dev_run=False, max_steps=1, limit_val_batches=0,
                 enable_checkpointing=False).fit(_Classifier())
