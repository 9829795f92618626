"""A finished fit leaves no training state behind in the module its data module still references."""

import gc

import torch
from tiny import ArrayTaskDataModule, task_info

from pactmerge.pipeline.finetuner import CLIPFineTuner, Recipe
from pactmerge.pipeline.heads import build_heads
from pactmerge.pipeline.training import fit_individual


def test_fit_frees_gradients_and_optimizer_state(tmp_path, tiny_loaded):
    heads = build_heads(tiny_loaded, [task_info("digits")])
    dm = ArrayTaskDataModule("digits", batch_size=16, n_train=64, n_val=32)
    recipe = Recipe(lr=1e-3, warmup_steps=1, max_steps=2, batch_size=16, ckpt_every_n_steps=2, final_validation=False)
    state = fit_individual(tiny_loaded, heads, dm, recipe, ckpt_dir=tmp_path, trainer_kwargs={"accelerator": "cpu",
                                                                                            "logger": False})
    gc.collect()
    module = dm.trainer.lightning_module  # Lightning keeps the data module's last trainer
    assert isinstance(module, CLIPFineTuner)
    assert all(p.grad is None for p in module.parameters())
    assert all(len(opt.state) == 0 for opt in dm.trainer.optimizers)
    # the checkpoint written during the fit still holds the optimizer state, for a resume
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["optimizer_states"][0]["state"]
    assert all(torch.equal(state[k], v) for k, v in module.encoder_state_dict().items())
