"""Seed replicates: the whole study once per seed, and the report over seeds.

A config with ``seeds: [0, 1, 2]`` (or ``pactmerge run --seeds 0,1,2``) runs the study once per
seed ``s`` in ``RUN_DIR/seed-<s>/``, a normal study directory (resumable, reportable on its own)
whose config is the given one with ``seed`` and ``recipe.seed`` set to ``s`` (fine-tunes,
multi-task sampling and the α subsets follow it). The data options, ``data.seed`` included,
stay as given, so every replicate is tested on the same examples: the spread over seeds
measures training randomness, the bootstrap interval the finite test sample.

The report in ``RUN_DIR`` (``write_replicate_report``) has one row per model: per-task and
average accuracies are means over seeds; ``avg_seeds`` (and ``gain_seeds`` for ``pact+`` rows)
holds ``n``, ``mean``, ``std`` (sample standard deviation, n - 1) and the per-seed ``values``; the
bootstrap interval (``avg_ci95``, ``accuracy_ci95``, ``gain_vs_plain``) is that of the seed mean,
from each example's correctness averaged over seeds with the examples resampled jointly.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import statistics
from pathlib import Path
from typing import Any

from pactmerge.errors import StageError
from pactmerge.fileio import write_json_atomic

log = logging.getLogger(__name__)

SEED_DIR = "seed-{}"
_SEED_DIR_RE = re.compile(r"^seed-(\d+)$")
REPLICATES = "replicates.json"


def seed_dirs(run_dir: str | Path) -> dict[int, Path]:
    """``{seed: RUN_DIR/seed-<seed>}`` for the replicate directories that hold a study, by seed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return {}
    found = {int(m.group(1)): p for p in run_dir.iterdir()
             if (m := _SEED_DIR_RE.match(p.name)) and (p / "manifest.json").is_file()}
    return dict(sorted(found.items()))


def refuse_replicate_dir(run_dir: str | Path) -> None:
    """``StageError`` when ``run_dir`` holds seed replicates: a single study does not go there."""
    found = seed_dirs(run_dir)
    if found:
        raise StageError(f"{run_dir} holds seed replicates ({', '.join(SEED_DIR.format(s) for s in found)}); "
                         "run them with their seeds (seeds: [...] or --seeds), or give a single study another "
                         "output_dir")


def replicate_config(cfg, seed: int):
    """``cfg`` for one replicate: ``seed`` and ``recipe.seed`` = ``seed``, no ``seeds``, output in
    ``<output_dir>/seed-<seed>``."""
    return dataclasses.replace(cfg, seed=int(seed), seeds=[], recipe=dataclasses.replace(cfg.recipe, seed=int(seed)),
                               output_dir=str(Path(cfg.output_dir) / SEED_DIR.format(seed)))


def run_replicates(cfg, *, force: bool = False, config_text: str | None = None) -> str:
    """Run (or resume) the study of every seed of ``cfg.seeds``, then the report over seeds; returns
    its Markdown table. Each replicate directory is opened by ``study.open_study`` and run under
    its own ``RunLock``; ``RUN_DIR`` itself is locked for the whole call."""
    from pactmerge.console import attach_run_log
    from pactmerge.pipeline.rundir import RunLock
    from pactmerge.pipeline.study import open_study, run_study

    top = Path(cfg.output_dir)
    if not cfg.seeds:
        raise StageError("run_replicates needs a config with seeds (e.g. seeds: [0, 1, 2])")
    if (top / "manifest.json").is_file():
        raise StageError(f"{top} holds a single study (manifest.json); seed replicates go in sub-directories of "
                         "a directory of their own: set another output_dir")
    with RunLock(top):
        write_json_atomic(top / REPLICATES, {"seeds": list(cfg.seeds), "layout": SEED_DIR.format("<seed>"),
                                             "config": cfg.to_dict()})
        for i, s in enumerate(cfg.seeds):
            sub = replicate_config(cfg, s)
            log.info("seed replicate %d of %d (seed %d): %s", i + 1, len(cfg.seeds), s, sub.output_dir)
            text = None if config_text is None else (
                f"{config_text}# seed replicate: seed={s}, recipe.seed={s}, output_dir={sub.output_dir}\n")
            with RunLock(sub.output_dir):
                ctx = open_study(sub, force=force, config_text=text, run_dir=sub.output_dir)
                handler = attach_run_log(ctx.run_dir)
                try:
                    run_study(ctx)
                finally:
                    logging.getLogger().removeHandler(handler)
                    handler.close()
        paths = write_replicate_report(top)
    return Path(paths["md"]).read_text()


def _spread(values: dict[int, float]) -> dict[str, Any]:
    vals = list(values.values())
    return {"n": len(vals), "mean": statistics.fmean(vals),
            "std": statistics.stdev(vals) if len(vals) > 1 else None, "values": {str(s): v for s, v in values.items()}}


def aggregate_rows(per_seed: dict[int, list[dict[str, Any]]], tasks: list[str]) -> list[dict[str, Any]]:
    """Rows over seeds from each seed's report rows (see the module docstring), in the first seed's
    order (rows only some seeds have come last)."""
    from pactmerge.pipeline.report import plain_of

    order: list[str] = []
    by_name: dict[str, dict[int, dict[str, Any]]] = {}
    for s, rows in per_seed.items():
        for r in rows:
            if r["name"] not in by_name:
                order.append(r["name"])
            by_name.setdefault(r["name"], {})[s] = r
    out = []
    for name in order:
        runs = by_name[name]
        first = next(iter(runs.values()))
        avg = {s: r["avg_absolute"] for s, r in runs.items()}
        norms = [r["avg_normalized"] for r in runs.values()]
        row = {"name": name, "kind": first["kind"], "entry": first.get("entry"),
               "accuracy": {t: statistics.fmean(r["accuracy"][t] for r in runs.values()) for t in tasks
                            if all(t in r["accuracy"] for r in runs.values())},
               "avg_absolute": statistics.fmean(avg.values()),
               "avg_normalized": None if None in norms else statistics.fmean(norms),
               "avg_seeds": _spread(avg)}
        if first.get("method") is not None:
            row["method"] = first["method"]
        alphas = {str(s): r.get("alpha") for s, r in runs.items() if r.get("alpha") is not None}
        if alphas:
            row["alpha_seeds"] = alphas
        plain = plain_of(name, by_name)
        if plain is not None:
            common = [s for s in runs if s in by_name[plain]]
            if common:
                gain = _spread({s: runs[s]["avg_absolute"] - by_name[plain][s]["avg_absolute"] for s in common})
                row["gain_seeds"] = {"plain": plain, **gain}
        out.append(row)
    return out


def write_replicate_report(run_dir: str | Path, tasks: list[str] | None = None, *, resamples: int | None = None,
                           seed: int | None = None) -> dict[str, Path]:
    """Each replicate's own report (rewritten), then the report over seeds in ``run_dir``; returns name -> path."""
    import json

    import numpy as np

    from pactmerge.pipeline import uncertainty
    from pactmerge.pipeline.report import add_intervals, row_correctness, write_outputs, write_report

    run_dir = Path(run_dir)
    dirs = seed_dirs(run_dir)
    if not dirs:
        raise StageError(f"{run_dir}: no seed replicates here (seed-<s>/ directories); run `pactmerge run` first")
    resamples = uncertainty.RESAMPLES if resamples is None else resamples
    seed = uncertainty.SEED if seed is None else seed
    per_seed, pooled, first_tasks = {}, {}, None
    for s, sub in dirs.items():
        try:
            write_report(sub, tasks, resamples=resamples, seed=seed)
        except StageError as exc:  # a replicate not yet evaluated: left out, said once
            log.warning("seed %d left out of the report over seeds: %s", s, exc)
            continue
        results = json.loads((sub / "results.json").read_text())
        if first_tasks is None:
            first_tasks = list(results["tasks"])
        elif list(results["tasks"]) != first_tasks:
            raise StageError(f"{sub}: tasks {results['tasks']} differ from the other replicates' {first_tasks}")
        per_seed[s] = results["rows"]
        models, _ = row_correctness(sub, results["rows"], first_tasks)
        pooled[s] = models
    if not per_seed:
        raise StageError(f"{run_dir}: no replicate has been evaluated yet; run `pactmerge run` first")
    tasks = first_tasks
    rows = aggregate_rows(per_seed, tasks)
    # correctness averaged over seeds, for rows with predictions in every replicate
    names = [r["name"] for r in rows if all(r["name"] in m for m in pooled.values())]
    models = {n: {t: np.mean([pooled[s][n][t] for s in pooled], axis=0) for t in tasks} for n in names}
    missing = [r["name"] for r in rows if r["name"] not in models]
    record = add_intervals(rows, models, missing, resamples=resamples, seed=seed)
    record["of"] = "the mean over seed replicates"
    return write_outputs(run_dir, rows, tasks, record, seeds=sorted(per_seed),
                         replicates={str(s): str(dirs[s].relative_to(run_dir)) for s in per_seed})
