"""configs/vitb32_20tasks.yaml on the hub-shaped fixtures: all 20 tasks resolve, train one step and evaluate."""

import dataclasses
import json
from pathlib import Path

import pytorch_lightning as pl

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "vitb32_20tasks.yaml"
TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class TaskSteps(pl.Callback):
    """The task of every training batch."""

    def __init__(self):
        self.tasks = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.tasks.append(batch["task"])


def test_twenty_task_config_on_hub_fixtures(tmp_path, hub_sources):
    from pactmerge.datamodules import MultiTaskDataModule
    from pactmerge.pipeline.config import load_config
    from pactmerge.pipeline.context import RunContext
    from pactmerge.pipeline.evaluate import evaluate_encoder
    from pactmerge.pipeline.heads import build_heads
    from pactmerge.pipeline.training import fit_joint

    model_json = tmp_path / "tiny_vit_20tasks.json"
    model_json.write_text(json.dumps(TINY_VIT))
    cfg = load_config(CONFIG, overrides=[
        f"output_dir={tmp_path / 'run'}", f"model.config={model_json}", "model.pretrained=null", "model.heads=text",
        f"data.sources={json.dumps(hub_sources)}", "data.cache_dir=null", "data.num_workers=0",
        "data.eval_batch_size=512", "recipe.batch_size=2", "recipe.warmup_steps=0", "recipe.precision=32-true",
        "recipe.compile=false", "cluster.accelerator=cpu",
    ])
    ctx = RunContext(cfg).resolve()  # every task's data opened through its source
    assert ctx.task_keys == list(hub_sources) and len(ctx.task_keys) == 20
    for key, dm in ctx.datamodules().items():
        spec = dm.source_spec()
        assert spec.location in hub_sources[key], key
    heads = build_heads(ctx.loaded, ctx.tasks)
    assert {k: h.shape[0] for k, h in heads.items()} == {t.key: t.num_classes for t in ctx.tasks}

    steps = TaskSteps()
    recipe = dataclasses.replace(ctx.cfg.recipe, max_steps=20, final_validation=False, limit_val_batches=0)
    multi = MultiTaskDataModule(list(ctx.datamodules().values()), sampling="balanced", seed=0)
    state = fit_joint(ctx.loaded, heads, multi, recipe, ckpt_dir=tmp_path / "joint", callbacks=[steps],
                      trainer_kwargs={"accelerator": "cpu", "devices": 1, "loggers": []})
    assert sorted(steps.tasks) == sorted(ctx.task_keys)  # one training step on each task

    accs = evaluate_encoder(ctx.loaded.encoder, state, heads, ctx.datamodules(), split="test", device="cpu")
    assert sorted(accs) == sorted(ctx.task_keys)
    assert all(0.0 <= a <= 1.0 for a in accs.values())
