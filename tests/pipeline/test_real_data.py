"""The training modes on pactmerge.datamodules (real offline tasks, tiny ViT)."""

import pytest
import torch

datamodules = pytest.importorskip("pactmerge.datamodules")

from pactmerge.pipeline.finetuner import Recipe  # noqa: E402
from pactmerge.pipeline.heads import build_heads  # noqa: E402
from pactmerge.pipeline.training import fit_individual, fit_joint, fit_sequential, read_summary  # noqa: E402

CPU = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "logger": False}


def _config(**kw):
    base = dict(batch_size=32, eval_batch_size=200, num_workers=0, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                max_train=640, max_eval=200, seed=0)
    return datamodules.DataConfig(**{**base, **kw})


def _recipe(**kw):
    return Recipe(**{**dict(lr=3e-3, weight_decay=0.0, warmup_steps=10, max_steps=120, ckpt_every_n_steps=8), **kw})


@pytest.mark.slow
def test_individual_fit_on_offline_digits(tmp_path, tiny_loaded):
    dm = datamodules.TaskDataModule("digits", _config(train_augment=False))
    heads = build_heads(tiny_loaded, [datamodules.get_task("digits")])
    fit_individual(tiny_loaded, heads, dm, _recipe(max_steps=80), ckpt_dir=tmp_path, trainer_kwargs=CPU)
    assert read_summary(tmp_path)["metrics"]["digits/acc"] > 0.3  # chance: 0.1


@pytest.mark.slow
def test_joint_resume_and_sequential_on_offline_tasks(tmp_path, tiny_loaded):
    tasks = ["digits", "faces"]
    heads = build_heads(tiny_loaded, [datamodules.get_task(t) for t in tasks])

    def multi():
        return datamodules.MultiTaskDataModule([datamodules.TaskDataModule(t, _config(max_train=160)) for t in tasks])

    recipe = _recipe(max_steps=20, final_validation=False)
    ref = fit_joint(tiny_loaded, heads, multi(), recipe, ckpt_dir=tmp_path / "ref", trainer_kwargs=CPU)

    import pytorch_lightning as pl

    class Boom(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 13:
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        fit_joint(tiny_loaded, heads, multi(), recipe, ckpt_dir=tmp_path / "run", trainer_kwargs=CPU,
                  callbacks=[Boom()])
    resumed = fit_joint(tiny_loaded, heads, multi(), recipe, ckpt_dir=tmp_path / "run", trainer_kwargs=CPU)
    for k in ref:
        assert torch.allclose(ref[k], resumed[k], atol=1e-6, rtol=0), k

    schedule = datamodules.SequentialSchedule([datamodules.TaskDataModule(t, _config(max_train=160)) for t in tasks])
    fit_sequential(tiny_loaded, heads, schedule, _recipe(max_steps=10), ckpt_dir=tmp_path / "seq",
                   trainer_kwargs=CPU)
    assert read_summary(tmp_path / "seq" / "01_faces")["metrics"].keys() >= {"faces/acc", "val/acc"}
