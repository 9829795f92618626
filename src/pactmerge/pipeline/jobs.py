"""``pactmerge run --jobs N``: a study's fine-tunes, then its merges, in N processes side by side on the CPU.

The fits of a study (one per task, joint, sequential) are independent of each other. A small
model on a CPU uses its cores poorly inside one fit (on 2 cores, EfficientNet-Lite0 at 64x64
steps 1.4x faster with 2 threads than with 1), so N single-fit processes of ``cores / N`` threads
each finish the stage sooner than one process using every core. Each worker is an ordinary
``pactmerge finetune`` of the same config and run directory (as the jobs of a SLURM array are),
writing its fits to the store itself; the study then goes on in the calling process, which
finds the fits done.

What the workers do (``plan``): the pending fits, longest first, each given to the worker with
the fewest steps so far (a joint fit counts ``comparisons.joint_steps`` steps, a sequential one
``recipe.max_steps`` per task). Then the pending merges, dealt out in turn to ``pactmerge merge
--only`` workers (``run_merge_jobs``): the AdaMerging variants first, then the plan's order.
Each worker's output goes to ``RUN_DIR/logs/jobs/<command>-<i>.log``; evaluation and the report
run in the calling process.

A fit's result depends on the thread count it ran with (CPU kernels are deterministic for one
thread count, not across counts), so ``--jobs 2`` gives other fine-tunes than ``--jobs 1``,
each reproducible; every fit's entry records its ``threads``. With CUDA, several devices or
nodes the fits run as configured, one after another.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from pactmerge.checkpoints.manifest import ManifestError
from pactmerge.errors import ConfigError, StageError

log = logging.getLogger(__name__)

LOG_DIR = Path("logs") / "jobs"


def pending_fits(ctx: Any) -> list[tuple[list[str], int]]:
    """(``pactmerge finetune`` arguments, steps) of every fit of ``ctx``'s study not yet stored."""
    return [(args, steps) for _, args, steps in _pending(ctx)]


def _pending(ctx: Any) -> list[tuple[str, list[str], int]]:
    """(store entry, ``finetune`` arguments, steps) of the fits not yet stored."""
    if ctx.cfg.pool is not None:
        return []
    from pactmerge.pipeline.stages import joint_recipe

    cfg, store = ctx.cfg, ctx.store
    fits = [(f"finetuned/{t}", ["--task", t], cfg.recipe.max_steps) for t in ctx.task_keys]
    if cfg.comparisons.joint:
        fits.append(("joint", ["--joint"], joint_recipe(ctx).max_steps))
    if cfg.comparisons.sequential:
        fits.append(("sequential", ["--sequential"], cfg.recipe.max_steps * len(ctx.task_keys)))
    return [f for f in fits if not store.has(f[0])]


def plan(fits: Sequence[tuple[list[str], int]], jobs: int) -> list[list[str]]:
    """The ``finetune`` arguments of each of at most ``jobs`` workers: longest fit first, each to the
    worker with the fewest steps so far (ties: the lower worker); workers without a fit are left out."""
    loads = [0] * jobs
    args: list[list[str]] = [[] for _ in range(jobs)]
    for fit_args, steps in sorted(fits, key=lambda f: -f[1]):  # stable: equal fits keep their order
        i = min(range(jobs), key=lambda w: (loads[w], w))
        loads[i] += steps
        args[i] += fit_args
    return [a for a in args if a]


def threads_per_job(jobs: int) -> int:
    """Intra-op threads of each worker: this process's torch threads shared out, at least one."""
    import torch

    return max(1, torch.get_num_threads() // jobs)


def check_jobs(ctx: Any, jobs: int) -> None:
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: give 1 or more worker processes")
    if jobs == 1:
        return
    c = ctx.cfg.cluster
    from pactmerge.pipeline.training import _accelerator

    if _accelerator(ctx.trainer_kwargs()) != "cpu" or c.num_nodes != 1 or c.devices not in (1, "1", "auto"):
        raise ConfigError(f"--jobs {jobs} runs fits side by side on the CPU; this config trains on "
                          f"{_accelerator(ctx.trainer_kwargs())} with devices={c.devices}, num_nodes={c.num_nodes}. "
                          "Drop --jobs (a GPU fit uses the device alone), or run a job array (`pactmerge slurm`)")


def run_fit_jobs(ctx: Any, jobs: int, config_argv: Sequence[str]) -> bool:
    """Run the pending fits of ``ctx`` in ``jobs`` ``pactmerge finetune`` processes and wait for them;
    True when there was something to fit. ``config_argv``: the config path and ``--set`` options the
    study was started with (and ``--output-dir`` when it was given). A failed worker is named with its
    log after the others finish; the fits that finished stay stored."""
    pending = _pending(ctx)
    if not pending:
        return False
    workers = plan([(args, steps) for _, args, steps in pending], jobs)
    _run_workers(ctx, "finetune", workers, [name for name, _, _ in pending], config_argv, "fine-tuning")
    return True


def run_merge_jobs(ctx: Any, jobs: int, config_argv: Sequence[str]) -> bool:
    """The pending merges of the merge stage and of the ``adamerging`` stage in ``jobs`` ``pactmerge merge
    --only`` processes, dealt out in turn: the AdaMerging variants first (each is longer than any planned
    merge), then the plan's order (so each worker gets its share of every kind); True when there was
    something to merge. The merges equal those of a one-process study at the workers' thread count."""
    from pactmerge.pipeline.merge_plan import adamerging_ids, plan_merges

    ids = [*adamerging_ids(ctx.cfg.merge), *(p.id for p in plan_merges(ctx.cfg.merge))]
    pending = [i for i in ids if not ctx.store.has(f"merged/{i}")]
    if not pending:
        return False
    workers = [[a for i in pending[w::jobs] for a in ("--only", i)] for w in range(min(jobs, len(pending)))]
    _run_workers(ctx, "merge", workers, [f"merged/{i}" for i in pending], config_argv, "merging")
    return True


def _run_workers(ctx: Any, command: str, workers: list[list[str]], names: list[str], config_argv: Sequence[str],
                 what: str) -> None:
    """``pactmerge COMMAND CONFIG_ARGV WORKER_ARGS`` for each worker, side by side, each with an equal share of
    this process's threads; waits, logging each of ``names`` as it reaches the store."""
    threads = threads_per_job(len(workers))
    log_dir = ctx.run_dir / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs: list[tuple[subprocess.Popen, Path, list[str]]] = []
    log.info("%s in %d processes of %d thread%s each (logs: %s)", what, len(workers), threads,
             "" if threads == 1 else "s", log_dir)
    t0 = time.perf_counter()
    try:
        for i, args in enumerate(workers):
            path = log_dir / f"{command}-{i}.log"
            argv = [sys.executable, "-m", "pactmerge", command, *config_argv, *args]
            with open(path, "w") as out:
                procs.append((subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env), path, args))
            log.info("%s worker %d: %s", command, i, " ".join(args))
        codes = _wait(ctx, [p for p, _, _ in procs], names, t0)
    except BaseException:  # an interrupt or an error here: the workers go too (their finished work stays)
        for p, _, _ in procs:
            if p.poll() is None:
                p.terminate()
        for p, _, _ in procs:
            p.wait()
        raise
    failed = [(path, args, code) for (_, path, args), code in zip(procs, codes) if code != 0]
    if failed:
        tails = "\n".join(f"  {' '.join(a)} (exit {c}), {p}:\n" + _tail(p) for p, a, c in failed)
        raise StageError(f"{len(failed)} of {len(workers)} {what} processes failed; finished work is kept, "
                         f"rerun to continue:\n{tails}")
    log.info("%d %s processes finished in %.1f s", len(workers), what, time.perf_counter() - t0)


def _wait(ctx: Any, procs: list[subprocess.Popen], names: list[str], t0: float) -> list[int]:
    """Wait for ``procs``, logging each of ``names`` as it reaches the store; their exit codes."""
    waiting = list(names)
    while True:
        running = [p for p in procs if p.poll() is None]
        if waiting:
            try:
                stored = set(ctx.store.names())
            except ManifestError:  # never expected (the manifest is replaced atomically): try again
                stored = set()
            for name in [n for n in waiting if n in stored]:
                waiting.remove(name)
                log.info("%s stored (%d of %d, %.0f s)", name, len(names) - len(waiting), len(names),
                         time.perf_counter() - t0)
        if not running:
            return [p.returncode for p in procs]
        time.sleep(0.5)


def _tail(path: Path, lines: int = 12) -> str:
    text = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    return "\n".join(f"    {line}" for line in [ln for ln in text if ln.strip()][-lines:])
