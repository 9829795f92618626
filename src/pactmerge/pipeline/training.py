"""The three training modes: individual, joint and sequential fine-tuning.

Each stage is one Lightning ``Trainer.fit`` that starts from given encoder weights and writes
into its own ``ckpt_dir``:

- ``last.ckpt``: Lightning's resumable checkpoint, written every ``recipe.ckpt_every_n_steps``
  steps (only one file, by rank 0). Rerunning an interrupted stage resumes from it, exactly
  on a single device (see ``training_data``).
- ``stage.json``: what the stage trains (tasks, hashes of the initial weights and heads, the
  recipe fields that matter); resuming a directory written for something else is refused.
- ``final.safetensors`` + ``final.json``: the finished encoder state and a summary (steps,
  tasks, recipe, final validation metrics). A rerun of a finished stage returns them
  without training.

Once the study has written a fit's result to its checkpoint store, ``prune_fit_dir`` removes
the weights files (``*.ckpt``, ``final.safetensors``: about four times the encoder's size for
a fit with AdamW) and keeps the logs, ``stage.json`` and ``final.json``.

``trainer_kwargs`` reach ``pl.Trainer`` unchanged (``accelerator``, ``devices``, ``num_nodes``,
``strategy="ddp"`` ...; torchrun and SLURM environments are detected by Lightning) and win
over the defaults built from the recipe.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import warnings
from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from pactmerge.callbacks.progress import StepProgressBar
from pactmerge.errors import CheckpointError, ConfigError, StageError
from pactmerge.fileio import load_state_dict, save_safetensors_atomic, write_json_atomic
from pactmerge.pipeline.finetuner import CLIPFineTuner, Recipe
from pactmerge.pipeline.preemption import (StepBoundaryRequeue, clear_hpc_checkpoints, in_slurm_step,
                                           resume_checkpoint)
from pactmerge.pipeline.training_data import ResumableData

log = logging.getLogger(__name__)

FINAL_STATE = "final.safetensors"
STAGE_IDENTITY = "stage.json"
# Recipe fields that change what a stage computes; a resume with other values is refused.
_RESUME_KEYS = ("lr", "weight_decay", "batch_size", "warmup_steps", "max_steps", "grad_clip", "precision", "seed",
                "bn_mode")
FINAL_SUMMARY = "final.json"
LAST_CKPT = "last.ckpt"


def _accelerator(trainer_kwargs: Mapping[str, Any]) -> str:
    acc = trainer_kwargs.get("accelerator", "auto")
    if acc in ("auto", "gpu"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(acc)


def _stage_title(ckpt_dir: Path) -> str:
    """``finetuned/mnist`` for ``RUN/lightning/finetuned/mnist``: the path below ``lightning/``."""
    parts = Path(ckpt_dir).parts
    if "lightning" in parts:
        below = parts[len(parts) - parts[::-1].index("lightning"):]
        if below:
            return "/".join(below)
    return Path(ckpt_dir).name


def build_loggers(ckpt_dir: Path, names: Any = ("csv",)) -> list[Any]:
    """Lightning loggers of one fit, all writing under ``ckpt_dir/logs``: ``csv`` (always available)
    and ``tensorboard`` (when the ``tensorboard`` package is installed; skipped with a warning otherwise)."""
    loggers: list[Any] = []
    for name in names:
        if name == "csv":
            loggers.append(CSVLogger(save_dir=ckpt_dir, name="logs", version=0))
        elif name == "tensorboard":
            try:
                from pytorch_lightning.loggers import TensorBoardLogger

                loggers.append(TensorBoardLogger(save_dir=ckpt_dir, name="logs", version="tensorboard"))
            except (ImportError, ModuleNotFoundError) as exc:
                log.warning("tensorboard logger requested but not available (%s); pip install tensorboard", exc)
        else:
            raise ConfigError(f"unknown logger {name!r}; use csv or tensorboard")
    return loggers


def build_trainer(recipe: Recipe, ckpt_dir: Path, trainer_kwargs: Mapping[str, Any] | None = None,
                  callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    """A Trainer for one stage: step-based, clipped, checkpointing ``last.ckpt`` into ``ckpt_dir``.

    ``trainer_kwargs["loggers"]`` (default ``["csv"]``) names the loggers (``build_loggers``);
    every other key reaches ``pl.Trainer`` unchanged.
    """
    trainer_kwargs = dict(trainer_kwargs or {})
    acc = _accelerator(trainer_kwargs)
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                           every_n_train_steps=recipe.ckpt_every_n_steps)
    loggers = build_loggers(Path(ckpt_dir), trainer_kwargs.pop("loggers", ("csv",)))
    kwargs: dict[str, Any] = dict(
        max_steps=recipe.max_steps, max_epochs=-1, precision=recipe.resolved_precision(acc),
        gradient_clip_val=recipe.grad_clip or None, default_root_dir=ckpt_dir,
        logger=loggers or False,
        log_every_n_steps=recipe.log_every_n_steps, limit_val_batches=recipe.limit_val_batches,
        num_sanity_val_steps=0, enable_progress_bar=True, enable_model_summary=False,
        # CPU: deterministic algorithms everywhere (bitwise-reproducible fits for one thread
        # count). CUDA: left to the kernels' defaults, which are not all deterministic
        # (bf16 autocast, atomics in some backward passes); see docs/reproducibility.md.
        deterministic=True if acc == "cpu" else None,
    )
    if recipe.val_check_interval is not None:
        kwargs["val_check_interval"] = recipe.val_check_interval
        kwargs["check_val_every_n_epoch"] = None  # step-based validation may cross epoch ends
    extra = list(trainer_kwargs.pop("callbacks", []))
    kwargs.update(trainer_kwargs)
    has_bar = any(isinstance(c, TQDMProgressBar) for c in [*(callbacks or []), *extra])
    bar = [] if has_bar or not kwargs.get("enable_progress_bar", True) else [StepProgressBar(_stage_title(Path(ckpt_dir)))]
    # inside a SLURM step: Lightning's auto-requeue checkpoints at a step boundary (pipeline.preemption)
    requeue = [StepBoundaryRequeue()] if in_slurm_step() else []
    kwargs["callbacks"] = [ckpt, *requeue, *(callbacks or []), *extra, *bar]
    return pl.Trainer(**kwargs)


def fit_stage(init_state: Mapping[str, torch.Tensor], loaded: Any, heads: Mapping[str, torch.Tensor],
              datamodule: pl.LightningDataModule, recipe: Recipe, *, ckpt_dir: str | Path,
              trainer_kwargs: Mapping[str, Any] | None = None,
              callbacks: list[pl.Callback] | None = None) -> dict[str, torch.Tensor]:
    """Fine-tune a copy of ``loaded.encoder`` holding ``init_state`` on ``datamodule``; return its state.

    Resumes from ``ckpt_dir/last.ckpt`` (or a newer SLURM ``hpc_ckpt_<n>.ckpt``) when present;
    returns ``final.safetensors`` when the stage already finished. The returned dict has every
    key of the encoder state (CPU tensors).
    """
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / FINAL_STATE
    if final.is_file():
        log.info("stage in %s already finished; loading %s", ckpt_dir, final)
        return load_state_dict(final)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _check_stage_identity(ckpt_dir, init_state, heads, recipe)
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    encoder = copy.deepcopy(loaded.encoder)
    encoder.load_state_dict(dict(init_state), strict=True)
    module = CLIPFineTuner(encoder, heads, loaded.logit_scale, recipe)
    data = ResumableData(datamodule)
    trainer = build_trainer(recipe, ckpt_dir, trainer_kwargs, callbacks)
    last = resume_checkpoint(ckpt_dir)  # last.ckpt, or a newer hpc_ckpt_<n>.ckpt of a SLURM requeue
    if last is not None:
        log.info("resuming from %s", last)
    with warnings.catch_warnings():
        # frozen BatchNorm layers are in eval mode on purpose (see CLIPFineTuner)
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        try:
            trainer.fit(module, datamodule=data, ckpt_path=str(last) if last is not None else None)
        except (pickle.UnpicklingError, EOFError) as exc:
            if last is None:
                raise
            raise CheckpointError(
                f"{last}: not a checkpoint this run wrote: it holds objects other than tensors and plain values "
                f"({type(exc).__name__}; nothing in it was executed). Remove it (`rm {last}`) and rerun to start "
                f"this fit afresh, or delete {ckpt_dir} to start the stage afresh") from None
    if trainer.interrupted or trainer.global_step < recipe.max_steps:
        raise StageError(f"training in {ckpt_dir} stopped at step {trainer.global_step} of {recipe.max_steps} "
                         "(interrupted or out of data); rerun to resume from the last checkpoint")
    clear_hpc_checkpoints(ckpt_dir)  # done with: Lightning's validate would load one under SLURM
    if trainer.world_size > 1:
        log.info("DDP rank %d of %d (node %d): %s training batches per epoch on this rank's shard; rank 0 writes "
                 "the checkpoints and the result", trainer.global_rank, trainer.world_size, trainer.node_rank,
                 trainer.num_training_batches)
    metrics: dict[str, float] = {}
    if recipe.final_validation and _has_val(data):
        trainer.validate(module, datamodule=data, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k and v.numel() == 1}
    state = module.encoder_state_dict()
    if trainer.is_global_zero:
        save_safetensors_atomic(final, state)
        write_json_atomic(ckpt_dir / FINAL_SUMMARY, {"steps": trainer.global_step, "tasks": list(heads),
                                                     "recipe": recipe.to_dict(), "metrics": metrics})
    trainer.strategy.barrier()
    # the data modules outlive the fit (later stages reuse them): drop their reference to this
    # Trainer, which holds the fitted module, so each fit's model is freed when the stage ends
    for dm in {id(m): m for m in (data, data.inner)}.values():
        dm.trainer = None
    return state


def prune_fit_dir(ckpt_dir: str | Path) -> int:
    """Delete the weights files of a fit whose result is stored elsewhere; return the bytes freed.

    Removes Lightning's checkpoints (``last.ckpt``, ``hpc_ckpt_<n>.ckpt``) and ``final.safetensors``
    in ``ckpt_dir`` and its sub-stages (the per-task fits of a sequential stage); the CSV and
    TensorBoard logs, ``stage.json`` and ``final.json`` stay. Only call it once the fit's result
    has been written atomically somewhere else: a rerun of the fit would start afresh.
    """
    freed = 0
    for path in sorted(Path(ckpt_dir).rglob("*")):
        if path.is_file() and (path.suffix == ".ckpt" or path.name == FINAL_STATE):
            freed += path.stat().st_size
            path.unlink()
    return freed


def _check_stage_identity(ckpt_dir: Path, init_state: Mapping[str, torch.Tensor],
                          heads: Mapping[str, torch.Tensor], recipe: Recipe) -> None:
    """Record what this stage trains; refuse to resume a directory written for something else."""
    from pactmerge.checkpoints import state_sha256

    rec = recipe.to_dict()
    ident = {"tasks": list(heads), "init_sha256": state_sha256(init_state),
             "heads_sha256": state_sha256(dict(heads)), "recipe": {k: rec[k] for k in _RESUME_KEYS}}
    path = ckpt_dir / STAGE_IDENTITY
    if path.is_file():
        have = json.loads(path.read_text())
        diffs = [k for k in ident if have.get(k) != ident[k]]
        diffs = [f"recipe.{k}" for k in _RESUME_KEYS if have["recipe"].get(k) != rec[k]] + \
            [k for k in diffs if k != "recipe"]
        if diffs:
            raise StageError(f"{ckpt_dir} holds a run with other {', '.join(diffs)}; resume it with the same "
                             "settings, or delete the directory to start again")
        return
    write_json_atomic(path, ident)


def _has_val(data: ResumableData) -> bool:
    return type(data.inner).val_dataloader is not pl.LightningDataModule.val_dataloader


def read_summary(ckpt_dir: str | Path) -> dict[str, Any] | None:
    """The ``final.json`` summary of a finished stage (steps, tasks, recipe, metrics), or None."""
    path = Path(ckpt_dir) / FINAL_SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def _task_key(dm: Any) -> str:
    task = getattr(dm, "task", None)
    return task if isinstance(task, str) else getattr(task, "key", str(task))


def _select(heads: Mapping[str, torch.Tensor], tasks: list[str]) -> dict[str, torch.Tensor]:
    missing = [t for t in tasks if t not in heads]
    if missing:
        raise ConfigError(f"no head for task(s) {missing}; heads exist for {sorted(heads)}")
    return {t: heads[t] for t in tasks}


def fit_individual(loaded: Any, heads: Mapping[str, torch.Tensor], task_dm: pl.LightningDataModule,
                   recipe: Recipe, *, ckpt_dir: str | Path, trainer_kwargs: Mapping[str, Any] | None = None,
                   callbacks: list[pl.Callback] | None = None) -> dict[str, torch.Tensor]:
    """Fine-tune the pre-trained encoder on the one task of ``task_dm``."""
    task = _task_key(task_dm)
    return fit_stage(loaded.encoder_state(), loaded, _select(heads, [task]), task_dm, recipe,
                     ckpt_dir=ckpt_dir, trainer_kwargs=trainer_kwargs, callbacks=callbacks)


def fit_joint(loaded: Any, heads: Mapping[str, torch.Tensor], multitask_dm: pl.LightningDataModule,
              recipe: Recipe, *, ckpt_dir: str | Path, trainer_kwargs: Mapping[str, Any] | None = None,
              callbacks: list[pl.Callback] | None = None) -> dict[str, torch.Tensor]:
    """Fine-tune the pre-trained encoder on all tasks of ``multitask_dm`` at once (one task per batch)."""
    tasks = [t if isinstance(t, str) else t.key for t in multitask_dm.tasks]
    return fit_stage(loaded.encoder_state(), loaded, _select(heads, tasks), multitask_dm, recipe,
                     ckpt_dir=ckpt_dir, trainer_kwargs=trainer_kwargs, callbacks=callbacks)


def sequential_stages(schedule: Any) -> list[tuple[str, pl.LightningDataModule]]:
    """``[(task, datamodule), ...]`` in the schedule's order."""
    modules = getattr(schedule, "modules", None)
    if modules is None:
        modules = list(schedule)
    if isinstance(modules, Mapping):
        return [(t, modules[t]) for t in schedule.order]
    return [(_task_key(dm), dm) for dm in modules]


def fit_sequential(loaded: Any, heads: Mapping[str, torch.Tensor], schedule: Any, recipe: Recipe, *,
                   ckpt_dir: str | Path, trainer_kwargs: Mapping[str, Any] | None = None,
                   callbacks: list[pl.Callback] | None = None) -> dict[str, torch.Tensor]:
    """Fine-tune on the schedule's tasks one after another, each stage from the previous result
    with a fresh optimizer and LR schedule. Stage ``i`` lives in ``ckpt_dir/<i>_<task>``; a rerun
    starts from the last finished stage and resumes the interrupted one.

    Only the chain's newest finished state is kept on disk: once stage ``i`` has finished, its
    Lightning checkpoints and stage ``i-1``'s weights files are removed (``prune_fit_dir``; logs and
    summaries stay), so a chain of many tasks holds one fit's files at a time.
    """
    from pactmerge.pipeline.preemption import global_rank

    stages = sequential_stages(schedule)
    dirs = [Path(ckpt_dir) / f"{i:02d}_{task}" for i, (task, _) in enumerate(stages)]
    done = max((i for i, d in enumerate(dirs) if (d / FINAL_STATE).is_file()), default=-1)
    if done >= 0:
        log.info("sequential: stages 0-%d already finished; continuing from %s", done, dirs[done])
    state = load_state_dict(dirs[done] / FINAL_STATE) if done >= 0 else loaded.encoder_state()
    for i in range(done + 1, len(stages)):
        task, dm = stages[i]
        log.debug("sequential stage %d: %s", i, task)
        state = fit_stage(state, loaded, _select(heads, [task]), dm, recipe, ckpt_dir=dirs[i],
                          trainer_kwargs=trainer_kwargs, callbacks=callbacks)
        if global_rank() == 0:  # fit_stage ended at a barrier: every rank has finished stage i
            for path in (dirs[i - 1],) if i else ():
                prune_fit_dir(path)
            for path in dirs[i].glob("*.ckpt"):
                path.unlink()
    return state
