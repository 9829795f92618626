import json

import pytest
import pytorch_lightning as pl
import torch
from tiny import ArrayMultiTaskDataModule, ArraySchedule, ArrayTaskDataModule, accuracy, task_info

from pactmerge.pipeline.finetuner import CLIPFineTuner, NonFiniteLossError, Recipe, warmup_cosine
from pactmerge.pipeline.heads import build_heads
from pactmerge.pipeline.training import fit_individual, fit_joint, fit_sequential, read_summary

CPU = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "logger": False}


def small_recipe(**kw):
    base = dict(lr=3e-3, weight_decay=0.0, warmup_steps=10, max_steps=150, ckpt_every_n_steps=20, log_every_n_steps=10)
    return Recipe(**{**base, **kw})


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 500, 2000) == pytest.approx(1 / 500)
    assert warmup_cosine(499, 500, 2000) == 1.0
    assert warmup_cosine(1250, 500, 2000) == pytest.approx(0.5)
    assert warmup_cosine(2000, 500, 2000) == pytest.approx(0.0)


def test_individual_fit_beats_chance(tmp_path, tiny_loaded):
    dm = ArrayTaskDataModule("digits")
    heads = build_heads(tiny_loaded, [task_info("digits")])
    before = accuracy(tiny_loaded.encoder, heads["digits"], dm.xv, dm.yv)
    state = fit_individual(tiny_loaded, heads, dm, small_recipe(), ckpt_dir=tmp_path, trainer_kwargs=CPU)
    enc = tiny_loaded.encoder
    assert set(state) == set(enc.state_dict())
    enc.load_state_dict(state)
    after = accuracy(enc, heads["digits"], dm.xv, dm.yv)
    assert after > 0.5 and after > before + 0.3, (before, after)
    summary = read_summary(tmp_path)
    assert summary["steps"] == 150 and summary["metrics"]["val/acc"] == pytest.approx(after, abs=1e-6)
    assert summary["metrics"]["digits/acc"] == summary["metrics"]["val/acc"]
    # a finished stage is returned as is
    again = fit_individual(tiny_loaded, heads, dm, small_recipe(), ckpt_dir=tmp_path, trainer_kwargs=CPU)
    assert all(torch.equal(again[k], state[k]) for k in state)


def test_joint_and_sequential(tmp_path, tiny_loaded):
    tasks = ["digits", "fashion_mnist"]
    mods = [ArrayTaskDataModule(t, n_train=320, n_val=200) for t in tasks]
    heads = build_heads(tiny_loaded, [task_info(t) for t in tasks])
    recipe = small_recipe(max_steps=100)
    joint = fit_joint(tiny_loaded, heads, ArrayMultiTaskDataModule(mods), recipe, ckpt_dir=tmp_path / "joint",
                      trainer_kwargs=CPU)
    metrics = read_summary(tmp_path / "joint")["metrics"]
    assert {"digits/acc", "fashion_mnist/acc", "val/acc"} <= set(metrics)
    assert metrics["val/acc"] == pytest.approx((metrics["digits/acc"] + metrics["fashion_mnist/acc"]) / 2)
    assert metrics["val/acc"] > 0.2
    seq = fit_sequential(tiny_loaded, heads, ArraySchedule(mods), small_recipe(max_steps=20),
                         ckpt_dir=tmp_path / "seq", trainer_kwargs=CPU)
    # stage 1 starts from stage 0's result, with its own optimizer and checkpoint directory
    first = read_summary(tmp_path / "seq" / "00_digits")
    second = read_summary(tmp_path / "seq" / "01_fashion_mnist")
    assert first["tasks"] == ["digits"] and second["tasks"] == ["fashion_mnist"] and second["steps"] == 20
    assert not torch.equal(joint["conv1.weight"], seq["conv1.weight"])
    # only the chain's newest state stays on disk: stage 0's weights went once stage 1 finished,
    # and stage 1 keeps its final state (what a rerun returns) but no Lightning checkpoint
    files = sorted(p.relative_to(tmp_path / "seq").as_posix() for p in (tmp_path / "seq").rglob("*")
                   if p.suffix in (".ckpt", ".safetensors"))
    assert files == ["01_fashion_mnist/final.safetensors"]
    from pactmerge.checkpoints import state_sha256

    # stage 1 started from stage 0's result: the individual fit of digits under the same recipe
    digits = fit_individual(tiny_loaded, {"digits": heads["digits"]}, mods[0], small_recipe(max_steps=20),
                            ckpt_dir=tmp_path / "digits", trainer_kwargs=CPU)
    stage1 = json.loads((tmp_path / "seq" / "01_fashion_mnist" / "stage.json").read_text())
    assert stage1["init_sha256"] == state_sha256(digits)
    again = fit_sequential(tiny_loaded, heads, ArraySchedule(mods), small_recipe(max_steps=20),
                           ckpt_dir=tmp_path / "seq", trainer_kwargs=CPU)
    assert all(torch.equal(again[k], seq[k]) for k in seq)


def test_sequential_killed_in_its_second_stage_resumes_to_the_same_encoder(tmp_path, tiny_loaded):
    tasks = ["digits", "fashion_mnist"]
    mods = [ArrayTaskDataModule(t, n_train=256, n_val=100) for t in tasks]
    heads = build_heads(tiny_loaded, [task_info(t) for t in tasks])
    recipe = small_recipe(max_steps=12, ckpt_every_n_steps=4, final_validation=False)
    ref = fit_sequential(tiny_loaded, heads, ArraySchedule(mods), recipe, ckpt_dir=tmp_path / "ref",
                         trainer_kwargs=CPU)

    class _BoomInSecond(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if module.tasks == ["fashion_mnist"] and trainer.global_step == 9:
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_sequential(tiny_loaded, heads, ArraySchedule(mods), recipe, ckpt_dir=tmp_path / "run",
                       trainer_kwargs=CPU, callbacks=[_BoomInSecond()])
    # stage 0 finished (kept: stage 1 starts from it), stage 1 has its step-8 checkpoint
    assert (tmp_path / "run" / "00_digits" / "final.safetensors").is_file()
    assert torch.load(tmp_path / "run" / "01_fashion_mnist" / "last.ckpt", weights_only=False)["global_step"] == 8
    resumed = fit_sequential(tiny_loaded, heads, ArraySchedule(mods), recipe, ckpt_dir=tmp_path / "run",
                             trainer_kwargs=CPU)
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)
    assert not (tmp_path / "run" / "00_digits" / "final.safetensors").exists()


class _Boom(pl.Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("crash_at", [13, 9])
def test_interrupted_fit_resumes_to_the_same_encoder(tmp_path, tiny_loaded, crash_at):
    # 8 batches per epoch, validated at each epoch's end, a checkpoint every 4 steps. A crash at
    # step 13 resumes from step 12, mid-epoch 1. A crash at step 9 resumes from step 8, whose
    # checkpoint was written before epoch 0's validation ran: that validation must not draw from
    # the global RNG that shuffles epoch 1, since the resumed run does not replay it.
    dm = ArrayTaskDataModule("digits", batch_size=32, n_train=256, n_val=100)
    heads = build_heads(tiny_loaded, [task_info("digits")])
    recipe = small_recipe(max_steps=20, ckpt_every_n_steps=4, final_validation=False)
    ref = fit_individual(tiny_loaded, heads, dm, recipe, ckpt_dir=tmp_path / "ref", trainer_kwargs=CPU)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_individual(tiny_loaded, heads, dm, recipe, ckpt_dir=tmp_path / "run", trainer_kwargs=CPU,
                       callbacks=[_Boom(crash_at)])
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == crash_at // 4 * 4 and not (tmp_path / "run" / "final.safetensors").exists()
    resumed = fit_individual(tiny_loaded, heads, dm, recipe, ckpt_dir=tmp_path / "run", trainer_kwargs=CPU)
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), k


def test_validation_schedule_does_not_change_the_fit(tmp_path, tiny_loaded):
    # validating every 3 steps or only at epoch ends draws nothing from training's random stream
    dm = ArrayTaskDataModule("digits", batch_size=32, n_train=256, n_val=100)
    heads = build_heads(tiny_loaded, [task_info("digits")])
    states = [fit_individual(tiny_loaded, heads, dm, small_recipe(max_steps=20, final_validation=False, **kw),
                             ckpt_dir=tmp_path / str(i), trainer_kwargs=CPU)
              for i, kw in enumerate([{}, {"val_check_interval": 3}])]
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


class _PoisonAt(pl.Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            batch["images"][0, 0, 0, 0] = float("nan")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_loaded):
    dm = ArrayTaskDataModule("digits", n_train=256, n_val=100)
    heads = build_heads(tiny_loaded, [task_info("digits")])
    recipe = small_recipe(max_steps=20, ckpt_every_n_steps=4)
    with pytest.raises(NonFiniteLossError, match="step 7"):
        fit_individual(tiny_loaded, heads, dm, recipe, ckpt_dir=tmp_path, trainer_kwargs=CPU,
                       callbacks=[_PoisonAt(7)])
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "final.safetensors").exists()


def test_batchnorm_running_stats_stay_pretrained(tmp_path):
    """A BatchNorm encoder: with bn_mode='frozen' running stats are bitwise unchanged while the
    affine weights train; with 'train' the statistics drift."""
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 32))
    with torch.no_grad():
        enc[1].running_mean.normal_()
    heads = {"digits": torch.linalg.qr(torch.randn(32, 10))[0].T.contiguous()}
    loaded = type("L", (), {"encoder": enc, "logit_scale": 100.0, "encoder_state": lambda self: enc.state_dict()})()
    dm = ArrayTaskDataModule("digits", n_train=256, n_val=100)
    for mode, drift in (("frozen", False), ("train", True)):
        state = fit_individual(loaded, heads, dm, small_recipe(max_steps=10, bn_mode=mode),
                               ckpt_dir=tmp_path / mode, trainer_kwargs=CPU)
        assert torch.equal(state["1.running_mean"], enc[1].running_mean) != drift
        assert torch.equal(state["1.running_var"], enc[1].running_var) != drift
        assert not torch.equal(state["1.weight"], enc[1].weight)


def test_finetuner_logs_and_heads_are_frozen(tiny_loaded):
    heads = build_heads(tiny_loaded, [task_info("digits")])
    module = CLIPFineTuner(tiny_loaded.encoder, heads, 100.0, Recipe())
    assert all(not b.requires_grad for n, b in module.named_buffers() if n.startswith("head_"))
    names = {n for n, _ in module.named_parameters()}
    assert names == {f"encoder.{n}" for n, _ in tiny_loaded.encoder.named_parameters()}
    assert json.dumps(Recipe().to_dict())


def test_bad_task_and_missing_heads_are_refused(tmp_path, tiny_loaded):
    from pactmerge.errors import ConfigError

    heads = build_heads(tiny_loaded, [task_info("digits")])
    module = CLIPFineTuner(tiny_loaded.encoder, heads, 100.0)
    with pytest.raises(ConfigError, match="heads for \\['digits'\\]"):
        module(torch.randn(2, 3, 32, 32), "mnist")
    with pytest.raises(ConfigError, match="no head for task"):
        fit_individual(tiny_loaded, heads, ArrayTaskDataModule("fashion_mnist", n_train=64, n_val=10),
                       small_recipe(), ckpt_dir=tmp_path, trainer_kwargs=CPU)


def test_recipe_resolution_and_validation():
    from pactmerge.errors import ConfigError

    r = Recipe()
    assert (r.lr, r.weight_decay, r.batch_size, r.warmup_steps, r.max_steps, r.grad_clip) == (1e-5, 0.1, 128, 500,
                                                                                               2000, 1.0)
    assert r.resolved_precision("cuda") == "bf16-mixed" and r.resolved_precision("cpu") == "32-true"
    assert r.resolved_compile("cuda") and not r.resolved_compile("cpu")
    with pytest.raises(ConfigError, match="bn_mode"):
        Recipe(bn_mode="sometimes")


def test_resume_with_another_recipe_is_refused(tmp_path, tiny_loaded):
    from pactmerge.errors import StageError

    heads = build_heads(tiny_loaded, [task_info("digits")])
    dm = ArrayTaskDataModule("digits", n_train=64, n_val=10)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_individual(tiny_loaded, heads, dm, small_recipe(max_steps=4), ckpt_dir=tmp_path, trainer_kwargs=CPU,
                       callbacks=[_Boom(1)])
    with pytest.raises(StageError, match="recipe.lr"):
        fit_individual(tiny_loaded, heads, dm, small_recipe(max_steps=4, lr=1.0), ckpt_dir=tmp_path,
                       trainer_kwargs=CPU)
