"""Preemption on SLURM: Lightning's auto-requeue at a step boundary, and where a fit resumes.

Inside a SLURM job step (``srun``), Lightning's ``SLURMEnvironment`` runs with ``auto_requeue``:
on the requeue signal (``SIGUSR1``; the generated sbatch scripts ask for it with
``--signal=SIGUSR1@<seconds>`` before the time limit) it saves ``hpc_ckpt_<n>.ckpt`` into the
fit's directory and calls ``scontrol requeue`` on its own job; the requeued job starts the same
``pactmerge finetune`` again, which resumes.

Lightning saves that checkpoint inside the signal handler, wherever the training step happens to
be (between two parameter updates of one optimizer step, say). ``StepBoundaryRequeue`` defers
Lightning's handler to the end of the current training step (``on_train_batch_end``, the point
where ``last.ckpt`` is written too), agreed across DDP ranks, so the checkpoint it writes is a
consistent one and a resumed fit equals an uninterrupted one.

``resume_checkpoint`` picks the newest of ``last.ckpt`` and Lightning's ``hpc_ckpt_*.ckpt``.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)

LAST_CKPT = "last.ckpt"
HPC_PATTERN = "hpc_ckpt_*.ckpt"


def resume_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The checkpoint a fit in ``ckpt_dir`` resumes from: the newest (by modification time) of
    ``last.ckpt`` and the ``hpc_ckpt_<n>.ckpt`` files of SLURM requeues, or None."""
    ckpt_dir = Path(ckpt_dir)
    found = [p for p in [ckpt_dir / LAST_CKPT, *ckpt_dir.glob(HPC_PATTERN)] if p.is_file()]
    if not found:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name == LAST_CKPT))


def clear_hpc_checkpoints(ckpt_dir: str | Path) -> None:
    """Remove the ``hpc_ckpt_<n>.ckpt`` files of a finished fit. Inside SLURM, Lightning's
    ``validate``/``test`` without ``ckpt_path`` load the newest of them into the module (its
    auto-resume), which after the fit would replace the trained weights with a requeue's."""
    for path in Path(ckpt_dir).glob(HPC_PATTERN):
        path.unlink(missing_ok=True)


def in_slurm_step() -> bool:
    """True inside a SLURM job step started by ``srun`` (where Lightning uses ``SLURMEnvironment``)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return "SLURM_NTASKS" in os.environ and SLURMEnvironment.job_name() not in ("bash", "interactive")


def global_rank() -> int:
    """This process's rank in the initialised process group (0 without one)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class StepBoundaryRequeue(pl.Callback):
    """Runs Lightning's SLURM requeue handler at the end of a training step instead of inside the
    signal handler (see the module docstring). Does nothing outside SLURM auto-requeue."""

    def __init__(self) -> None:
        self._handler: Any = None
        self._signum: int | None = None
        self._pending = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning_fabric.plugins.environments import SLURMEnvironment

        env = trainer._accelerator_connector.cluster_environment
        if not isinstance(env, SLURMEnvironment) or not env.auto_requeue or env.requeue_signal is None:
            return
        handler = signal.getsignal(env.requeue_signal)
        if not callable(handler):
            return
        self._handler, self._signum = handler, int(env.requeue_signal)
        signal.signal(self._signum, self._defer)  # Lightning restores the original handlers at teardown

    def _defer(self, signum: int, frame: Any) -> None:
        log.info("signal %d received: checkpoint and requeue at the end of this training step", signum)
        self._pending = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._handler is None:
            return
        pending = self._pending
        if trainer.world_size > 1:  # every rank saves at the same step (the save has a barrier)
            flag = torch.tensor([1.0 if pending else 0.0], device=trainer.strategy.root_device)
            pending = bool(trainer.strategy.reduce(flag, reduce_op="max").item() > 0)
        if pending:
            self._pending = False
            self._handler(self._signum, None)
