"""The stages of a study, each a plain function of a ``RunContext``.

Every stage is idempotent: it reads the checkpoint store's manifest and skips what is
already there, so a rerun continues an interrupted study, and each stage can run alone
(``pactmerge finetune --task X`` as one job of an array, ``merge``, ``evaluate``, ``report``).
Each returns True when it did work (False when it found everything done), which the study
uses for its ``timings``. The merge stage lives in ``pipeline.merge_stage``.

Every fine-tune is written to the store once, here, from the state its fit returns (the fit's
own ``final.safetensors`` beside its Lightning checkpoints is what makes a finished fit
resumable; it is not a store entry). Once the entry is written, the fit's weights files are
removed (``training.prune_fit_dir``): the store entry is the result, and the Lightning
checkpoints with their optimizer state are three times its size.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from pactmerge.errors import StageError
from pactmerge.pipeline.context import RunContext

log = logging.getLogger(__name__)


def prepare(ctx: RunContext) -> bool:
    """Store the pre-trained encoder (binding the store to the model) and every task's frozen head."""
    store, loaded = ctx.store, ctx.loaded
    store.bind(loaded.model_config, loaded.weights_sha256)
    did = False
    if not store.has("pretrained"):
        store.save_state("pretrained", loaded.encoder_state(),
                         {"kind": "pretrained", "model": dataclasses.asdict(ctx.cfg.model)})
        did = True
    missing = [info for info in ctx.tasks if not store.has_head(info.key)]
    if missing:
        from pactmerge.pipeline.heads import build_heads

        for key, head in build_heads(loaded, missing).items():
            store.save_head(key, head, {"task": key, "text_pretrained": loaded.text_pretrained})
        did = True
    return did


def _rank() -> int:
    """This process's rank in a DDP fit (0 outside one)."""
    from pactmerge.pipeline.preemption import global_rank

    return global_rank()


def _fit_meta(ckpt_dir: Path) -> dict[str, Any]:
    """Steps and final validation metrics of a finished fit, from its summary file."""
    from pactmerge.pipeline.training import read_summary

    summary = read_summary(ckpt_dir) or {}
    return {"steps": summary.get("steps"), "metrics": {"fit": summary.get("metrics", {})}, "threads": _threads()}


def _threads() -> int:
    """This process's torch threads: CPU fits are reproducible for one thread count, so the count is
    part of a fit's record (``pactmerge run --jobs`` fits with fewer)."""
    import torch

    return torch.get_num_threads()


def _refuse_fit_of_pool(ctx: RunContext, name: str) -> None:
    if getattr(ctx.cfg, "pool", None) is not None:
        raise StageError(f"{name}: this config imports its checkpoints (pool:) and fine-tunes nothing; "
                         "`pactmerge run CONFIG` imports them (its import stage)")


def finetune_individual(ctx: RunContext, task: str) -> bool:
    """Individual fine-tuning on ``task`` alone, from the pre-trained weights -> ``finetuned/<task>``."""
    from pactmerge.pipeline.training import fit_individual

    key = ctx.task_key(task)
    name = f"finetuned/{key}"
    if ctx.store.has(name):
        log.info("%s: already fine-tuned, skipping", key)
        return False
    _refuse_fit_of_pool(ctx, name)
    prepare(ctx)
    ckpt_dir = ctx.store.lightning_dir(name)
    state = fit_individual(ctx.loaded, ctx.heads(), ctx.datamodule(key), ctx.cfg.recipe, ckpt_dir=ckpt_dir,
                           trainer_kwargs=ctx.trainer_kwargs())
    if _rank() != 0:  # a DDP fit: rank 0 alone writes the store entry
        return True
    _store_fit(ctx, name, state, {"kind": "finetuned", "task": key, "recipe": ctx.cfg.recipe.to_dict(),
                                  **_fit_meta(ckpt_dir)}, ckpt_dir)
    return True


def _store_fit(ctx: RunContext, name: str, state: Any, meta: dict[str, Any], ckpt_dir: Path) -> None:
    """Write fit result ``name`` to the store, then free its fit directory's weights files."""
    from pactmerge.pipeline.training import prune_fit_dir

    ctx.store.save_state(name, state, meta)
    freed = prune_fit_dir(ckpt_dir)
    if freed:
        log.info("%s stored; removed %.1f MB of checkpoints from %s", name, freed / 1e6, ckpt_dir)


def joint_recipe(ctx: RunContext):
    """The recipe of joint training: ``comparisons.joint_steps`` steps, default max_steps × tasks."""
    steps = ctx.cfg.comparisons.joint_steps or ctx.cfg.recipe.max_steps * len(ctx.tasks)
    return dataclasses.replace(ctx.cfg.recipe, max_steps=steps)


def finetune_joint(ctx: RunContext) -> bool:
    """Joint multi-task fine-tuning (every batch from one task, through its head) -> ``joint``."""
    from pactmerge.datamodules import MultiTaskDataModule
    from pactmerge.pipeline.training import fit_joint

    if ctx.store.has("joint"):
        log.info("joint: already trained, skipping")
        return False
    _refuse_fit_of_pool(ctx, "joint")
    prepare(ctx)
    sampling = ctx.cfg.comparisons.joint_sampling
    multi = MultiTaskDataModule(list(ctx.datamodules().values()), sampling=sampling, seed=ctx.cfg.seed)
    recipe = joint_recipe(ctx)
    ckpt_dir = ctx.store.lightning_dir("joint")
    state = fit_joint(ctx.loaded, ctx.heads(), multi, recipe, ckpt_dir=ckpt_dir, trainer_kwargs=ctx.trainer_kwargs())
    if _rank() != 0:  # a DDP fit: rank 0 alone writes the store entry
        return True
    _store_fit(ctx, "joint", state, {"kind": "joint", "tasks": ctx.task_keys, "sampling": sampling,
                                     "recipe": recipe.to_dict(), **_fit_meta(ckpt_dir)}, ckpt_dir)
    return True


def finetune_sequential(ctx: RunContext) -> bool:
    """Sequential fine-tuning, one task after another, each from the previous result -> ``sequential``."""
    from pactmerge.datamodules import SequentialSchedule
    from pactmerge.pipeline.training import fit_sequential

    if ctx.store.has("sequential"):
        log.info("sequential: already trained, skipping")
        return False
    _refuse_fit_of_pool(ctx, "sequential")
    prepare(ctx)
    order = ctx.sequential_order()
    schedule = SequentialSchedule([ctx.datamodule(t) for t in order])
    ckpt_dir = ctx.store.lightning_dir("sequential")
    state = fit_sequential(ctx.loaded, ctx.heads(), schedule, ctx.cfg.recipe, ckpt_dir=ckpt_dir,
                           trainer_kwargs=ctx.trainer_kwargs())
    if _rank() != 0:  # a DDP fit: rank 0 alone writes the store entry
        return True
    _store_fit(ctx, "sequential", state, {"kind": "sequential", "order": order, "recipe": ctx.cfg.recipe.to_dict(),
                                          "threads": _threads()}, ckpt_dir)
    return True


def evaluation_plan(ctx: RunContext) -> list[tuple[str, list[str]]]:
    """(store entry, tasks) of every model whose test accuracy the report shows: the planned ones
    (``merge_plan.evaluation_entries``, which ``pactmerge status`` reads too, merges included), then
    any other merged entry of the store (AdaMerging's)."""
    from pactmerge.pipeline.merge_plan import evaluation_entries

    plan = evaluation_entries(ctx.cfg, ctx.task_keys)
    planned = {name for name, _ in plan}
    return plan + [(n, ctx.task_keys) for n in ctx.store.names("merged/") if n not in planned]


def _missing_stage(name: str) -> str:
    if name.startswith("merged/"):
        return "merge"
    return "finetune --task" if name.startswith("finetuned/") else f"finetune --{name}"


def evaluate(ctx: RunContext) -> bool:
    """Test predictions and accuracy of every model of ``evaluation_plan``, through the study's one
    evaluation path (``ctx.predictions``): the predictions per example go to
    ``RUN_DIR/predictions/<entry>.npz`` (``pipeline.evaluate.load_predictions``), the accuracies
    to the entry's ``metrics.test``. An entry with both is skipped."""
    from pactmerge.pipeline.merge_stage import rebuildable

    prepare(ctx)
    did = False
    drop = not ctx.cfg.merge.keep_weights
    for name, tasks in evaluation_plan(ctx):
        if not ctx.store.has(name):
            raise StageError(f"evaluate needs {name!r}; run `pactmerge {_missing_stage(name)} ...` "
                             "(or `pactmerge run CONFIG`) first")
        did = evaluate_entry(ctx, name, tasks) or did
        if drop and rebuildable(ctx, name) and ctx.store.weights_kept(name):
            drop_merged_weights(ctx, name)
    return did


def evaluate_entry(ctx: RunContext, name: str, tasks: list[str], state: Any = None) -> bool:
    """Test predictions (``RUN_DIR/predictions/<entry>.npz``) and accuracies (``metrics.test``) of entry
    ``name`` on ``tasks``, unless it has both; ``state``: its weights when at hand. True when it evaluated."""
    from pactmerge.pipeline.evaluate import accuracy, predictions_path, save_predictions
    from pactmerge.pipeline.merge_stage import load_entry_state

    metrics = dict(ctx.store.entry(name).get("metrics") or {})
    if all(t in metrics.get("test", {}) for t in tasks) and predictions_path(ctx.run_dir, name).is_file():
        return False
    log.info("evaluating %s on %s", name, ", ".join(tasks))
    preds = ctx.predictions(load_entry_state(ctx, name) if state is None else state, tasks, split="test")
    save_predictions(ctx.run_dir, name, preds)
    metrics["test"] = {t: accuracy(p, y) for t, (p, y) in preds.items()}
    ctx.store.update_meta(name, metrics=metrics, eval_precision=ctx.evaluator().precision)
    return True


def drop_merged_weights(ctx: RunContext, name: str) -> None:
    freed = ctx.store.drop_weights(name)
    log.info("%s evaluated; its weights file removed (merge.keep_weights: false; %.1f MB)", name, freed / 1e6)


def report(ctx: RunContext) -> str:
    """Write results.json/csv/md and the plots; returns the Markdown table."""
    from pactmerge.pipeline.report import write_report

    paths = write_report(ctx.run_dir, ctx.task_keys)
    return Path(paths["md"]).read_text()
