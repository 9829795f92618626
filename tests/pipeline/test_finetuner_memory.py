"""A finished fit leaves no training state behind: no gradients or optimizer state in its module,
and no reference from the data module (which later stages reuse) to its Trainer."""

import weakref

import pytorch_lightning as pl
import torch
from tiny import ArrayTaskDataModule, task_info

from pactmerge.pipeline.finetuner import CLIPFineTuner, Recipe
from pactmerge.pipeline.heads import build_heads
from pactmerge.pipeline.training import fit_individual


class _Watch(pl.Callback):
    """Records, at the end of the fit, what the module holds and a weak reference to it."""

    def on_fit_end(self, trainer, pl_module):
        self.module = weakref.ref(pl_module)
        self.optimizers = [weakref.ref(o) for o in trainer.optimizers]


def test_fit_frees_gradients_optimizer_state_and_the_trainer(tmp_path, tiny_loaded):
    heads = build_heads(tiny_loaded, [task_info("digits")])
    dm = ArrayTaskDataModule("digits", batch_size=16, n_train=64, n_val=32)
    recipe = Recipe(lr=1e-3, warmup_steps=1, max_steps=2, batch_size=16, ckpt_every_n_steps=2, final_validation=False)
    watch = _Watch()
    state = fit_individual(tiny_loaded, heads, dm, recipe, ckpt_dir=tmp_path, callbacks=[watch],
                           trainer_kwargs={"accelerator": "cpu", "logger": False})
    module = watch.module()
    assert isinstance(module, CLIPFineTuner)
    assert all(p.grad is None for p in module.parameters())  # teardown cleared them
    assert all(len(o().state) == 0 for o in watch.optimizers if o() is not None)
    assert all(torch.equal(state[k], v) for k, v in module.encoder_state_dict().items())
    # the checkpoint written during the fit still holds the optimizer state, for a resume
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["optimizer_states"][0]["state"]
    assert dm.trainer is None  # the data module no longer holds the Trainer (and its module)
