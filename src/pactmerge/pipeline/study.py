"""The study: the stages of ``pipeline.stages`` and ``pipeline.merge_stage`` run in order.

``open_study`` resolves a config (its tasks, the model, the data) and only then claims the run
directory (``rundir.claim``), for every command that works in a study's run directory;
``run_study`` runs every stage, skipping finished ones. Each
stage that did work logs one line and records its wall-clock seconds in ``RUN_DIR/timings.json``
(``{"stages": {name: seconds}}``; a rerun that finds a stage finished keeps its earlier figure),
which the report copies into ``results.json`` as ``timings``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Callable, Sequence

from pactmerge.fileio import write_json_atomic
from pactmerge.pipeline import merge_plan, merge_stage, stages
from pactmerge.pipeline.context import RunContext
from pactmerge.pipeline.rundir import claim

log = logging.getLogger(__name__)

TIMINGS = "timings.json"


def open_study(cfg, *, force: bool = False, config_text: str | None = None, run_dir=None,
               tasks=None) -> RunContext:
    """The one way to open a study: the context of ``cfg`` (in ``run_dir`` when given, else its
    ``output_dir``) resolved first (the model; the data of ``tasks``, default all), so that a bad
    config, model or data source fails before the directory is touched, then its run directory
    claimed (``rundir.claim``; ``force`` moves another config's run aside; ``config_text`` is
    recorded as ``config.yaml``)."""
    if run_dir is not None:
        cfg = dataclasses.replace(cfg, output_dir=str(run_dir))
    ctx = RunContext(cfg).resolve(tasks)
    claim(ctx, force=force, config_text=config_text)
    return ctx


def _merge(ctx: RunContext) -> bool:
    built: list[str] = []
    merge_stage.run_merge_stage(ctx, built=built)
    return bool(built)


def stage_plan(ctx: RunContext) -> list[tuple[str, Callable[[], bool]]]:
    """(stage name, thunk returning whether it did work) in the order ``run_study`` runs them.
    A new stage is a function of a ``RunContext`` in ``pipeline.stages``, added here."""
    c = ctx.cfg.comparisons
    plan: list[tuple[str, Callable[[], bool]]] = [
        ("prepare", lambda: stages.prepare(ctx)),
        ("finetune_individual", lambda: any([stages.finetune_individual(ctx, t) for t in ctx.task_keys])),
    ]
    if c.joint:
        plan.append(("finetune_joint", lambda: stages.finetune_joint(ctx)))
    if c.sequential:
        plan.append(("finetune_sequential", lambda: stages.finetune_sequential(ctx)))
    if ctx.cfg.pool is not None:  # published checkpoints: imported instead of fine-tuned
        from pactmerge.pipeline.pool import import_pool

        plan[1:] = [("import", lambda: import_pool(ctx))]
    plan.append(("merge", lambda: _merge(ctx)))
    if ctx.cfg.merge.adamerging.variants:
        from pactmerge.pipeline.adamerging import run_adamerging

        plan.append(("adamerging", lambda: run_adamerging(ctx)))
    plan.append(("evaluate", lambda: stages.evaluate(ctx)))
    return plan


def record_timing(ctx: RunContext, name: str, seconds: float) -> None:
    """Set ``stages.<name>`` of ``RUN_DIR/timings.json`` to ``seconds``."""
    path = ctx.run_dir / TIMINGS
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    data.setdefault("stages", {})[name] = round(seconds, 2)
    write_json_atomic(path, data)


def run_study(ctx: RunContext, *, jobs: int = 1, config_argv: Sequence[str] = ()) -> str:
    """Every stage in order, skipping finished ones, then the report; returns the Markdown results table.

    ``jobs`` > 1 runs the fine-tunes, then the merges, in that many ``pactmerge finetune`` / ``merge``
    processes side by side (``pipeline.jobs``; ``config_argv``: the config path and options they are
    started with), timed as the stages ``finetune_jobs`` and ``merge_jobs``."""
    from pactmerge.pipeline import jobs as workers

    workers.check_jobs(ctx, jobs)

    def in_workers(stage: str, run: Callable[..., bool]) -> None:
        """``run`` the stage's pending work in the worker processes, timed as ``stage``."""
        t0 = time.perf_counter()
        if run(ctx, jobs, config_argv):
            record_timing(ctx, stage, time.perf_counter() - t0)
            claim(ctx, quiet=True)  # the workers recorded their own environment: this process's again

    t_start = time.perf_counter()
    for name, thunk in stage_plan(ctx):
        if name == "merge" and jobs > 1:
            in_workers("merge_jobs", workers.run_merge_jobs)
        t0 = time.perf_counter()
        if thunk():
            seconds = time.perf_counter() - t0
            log.info("stage %s finished in %.1f s", name, seconds)
            record_timing(ctx, name, seconds)
        else:
            log.info("stage %s: already done", name)
        if name == "prepare":
            check_disk(ctx)
            if jobs > 1:
                in_workers("finetune_jobs", workers.run_fit_jobs)
    t0 = time.perf_counter()
    table = stages.report(ctx)
    log.info("stage report finished in %.1f s; study finished in %.1f s", time.perf_counter() - t0,
             time.perf_counter() - t_start)
    return table


def disk_need(ctx: RunContext) -> int:
    """Bytes the rest of the study writes to its store, about: one encoder state per entry still to
    write, plus, while fits remain, the largest fit directory (Lightning's checkpoint with AdamW's two
    moments and the fit's final state: four states more). Needs ``pretrained`` stored."""
    size = ctx.store.path("pretrained").stat().st_size
    names = [n for _, entries in merge_plan.stage_entries(ctx.cfg, ctx.task_keys) for n in entries]
    todo = [n for n in names if not n.startswith("heads/") and not ctx.store.has(n)]
    fits = ctx.cfg.pool is None and any(n.startswith("finetuned/") or n in merge_plan.COMPARISONS for n in todo)
    if not ctx.cfg.merge.keep_weights:  # one merge's weights at a time (AdaMerging's are kept)
        merges = [n for n in todo if merge_stage.rebuildable(ctx, n)]
        todo = [n for n in todo if n not in merges] + merges[:1]
    return size * (len(todo) + (4 if fits else 0))


def check_disk(ctx: RunContext) -> None:
    """Say up front when the run directory's file system has less room than the study will write."""
    import shutil

    need, free = disk_need(ctx), shutil.disk_usage(ctx.run_dir).free
    if need > free:
        log.warning("the rest of this study writes about %s to %s, whose file system has %s free: it will stop "
                    "when the disk is full (finished entries are kept; free space and rerun to continue)",
                    _size(need), ctx.run_dir, _size(free))
    else:
        log.info("the rest of this study writes about %s to %s (%s free)", _size(need), ctx.run_dir, _size(free))


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


# -- pactmerge run --dry-run -------------------------------------------------------------------------
def describe(ctx: RunContext) -> str:
    """What ``run_study`` would do for ``ctx``: model, tasks (sources; sizes of local data), the merges
    with their resolved parameters, α selection and the stages with their state in the run directory.
    Reads files only: nothing is trained, downloaded or written."""
    from pactmerge.datamodules import TaskDataModule

    cfg = ctx.cfg
    lines = [f"output directory: {ctx.run_dir} ({_dir_state(ctx)})",
             f"model: {cfg.model.name}" + "".join(f", {k}={getattr(cfg.model, k)}" for k in ("pretrained", "weights",
                                                                                              "config")
                                                  if getattr(cfg.model, k, None)),
             f"tasks ({len(ctx.tasks)}):"]
    for info in ctx.tasks:
        dm = TaskDataModule(info, cfg.data)
        spec = dm.source_spec()
        size = "sizes known once downloaded"
        if spec.kind != "hub":
            try:
                size = ", ".join(f"{k} {v}" for k, v in dm.split_sizes().items())
            except Exception as exc:  # a missing local source: say why, as the run would
                size = f"unavailable: {exc}"
        lines.append(f"  {info.key:<16} {info.display_name}; source {spec.describe()}; {size}")
    if cfg.pool is not None:
        from pactmerge.pipeline.pool import describe_pool

        lines += describe_pool(cfg, ctx.task_keys)
    m = cfg.merge
    lines.append(f"merges ({len(merge_plan.plan_merges(m))}), alpha: {m.alpha_search}"
                 + (" on the validation splits, widened up to each method's alpha_bounds"
                    if m.alpha_search != "fixed" else "")
                 + (f", grid {m.alpha_grid}" if m.alpha_grid else ", each method's grid"))
    for planned in merge_plan.plan_merges(m):
        resolved = merge_plan.resolved_params(planned)
        lines.append(f"  {planned.id:<24} params {json.dumps(resolved['params'], sort_keys=True)}")
        if resolved["pact_params"] is not None:
            lines.append(f"  {'':<24} pact   {json.dumps(resolved['pact_params'], sort_keys=True)}")
    done = _finished_entries(ctx)
    lines.append("stages:")
    for name, _ in stage_plan(ctx):
        lines.append(f"  {name:<20} {_stage_state(ctx, name, done)}")
    lines.append(f"  {'report':<20} always rewritten")
    return "\n".join(lines)


def _dir_state(ctx: RunContext) -> str:
    from pactmerge.pipeline.rundir import identity_diff, read_run_info

    info = read_run_info(ctx.run_dir)
    if info is None:
        return "new" if not ctx.run_dir.exists() else "exists, not yet claimed"
    diff = identity_diff(ctx.run_dir, info, ctx.cfg)
    return "same config: finished stages are kept" if not diff else f"another config (differs at: {', '.join(diff[:8])})"


def _finished_entries(ctx: RunContext) -> set[str]:
    try:
        return set(json.loads((ctx.run_dir / "manifest.json").read_text()).get("entries", {}))
    except (OSError, ValueError, AttributeError):
        return set()


def _stage_state(ctx: RunContext, name: str, done: set[str]) -> str:
    want = dict(merge_plan.stage_entries(ctx.cfg, ctx.task_keys)).get(name)
    if want is None:
        return "runs when its inputs are missing test metrics"
    todo = [w for w in want if w not in done]
    return "done" if not todo else f"to do: {', '.join(todo)}"
