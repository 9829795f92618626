"""The study's report: ``results.json``, ``results.csv``, ``results.md`` and PNG plots.

Everything is read back from the checkpoint store's manifest (and the merge diagnostics
files), so ``pactmerge report RUN_DIR`` regenerates it at any time. Rows follow the
published layout: zero-shot, individual, joint, sequential, then each merge with and
without PACT; columns: the tasks, the absolute average and the normalized average (%).

Uncertainty (``pipeline.uncertainty``): from the per-example test predictions of every
evaluated entry (``RUN_DIR/predictions/``), each row gets a 95% bootstrap interval on its
average accuracy (``avg_ci95``) and per task (``accuracy_ci95``), and each ``pact+`` row a
paired gain over its plain method (``gain_vs_plain``: ``plain``, ``mean``, ``ci95``). Rows of a
run evaluated before predictions were kept have no interval, and the report says so.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from pactmerge.checkpoints import CheckpointStore
from pactmerge.errors import PactmergeError, StageError
from pactmerge.fileio import write_json_atomic, write_text_atomic
from pactmerge.pipeline.merge_plan import COMPARISONS

log = logging.getLogger(__name__)


def collect_rows(store: CheckpointStore, tasks: list[str]) -> list[dict[str, Any]]:
    """One row per evaluated model: name, kind, per-task test accuracy (0..1), averages, α."""
    individual = {}
    for t in tasks:
        if store.has(f"finetuned/{t}"):
            acc = store.entry(f"finetuned/{t}").get("metrics", {}).get("test", {}).get(t)
            if acc is not None:
                individual[t] = acc
    rows = []

    def add(name: str, kind: str, accs: dict[str, float], entry: str | None, **extra: Any) -> None:
        accs = {t: accs[t] for t in tasks if t in accs}
        if not accs:
            return
        avg = sum(accs.values()) / len(accs)
        norm = None
        if len(accs) == len(tasks) and len(individual) == len(tasks) and all(v > 0 for v in individual.values()):
            norm = sum(accs[t] / individual[t] for t in tasks) / len(tasks)
        rows.append({"name": name, "kind": kind, "entry": entry, "accuracy": accs, "avg_absolute": avg,
                     "avg_normalized": norm, **extra})

    if store.has("pretrained"):
        add("zero-shot", "zero_shot", store.entry("pretrained").get("metrics", {}).get("test", {}), "pretrained")
    if len(individual) == len(tasks):
        add("individual", "individual", individual, None)  # task t from entry finetuned/<t>
    for name in COMPARISONS:
        if store.has(name):
            e = store.entry(name)
            add(name, name, e.get("metrics", {}).get("test", {}), name, order=e.get("order"))
    for name in sorted(store.names("merged/"), key=_merge_order):
        e = store.entry(name)
        add(name.split("/", 1)[1], "merged", e.get("metrics", {}).get("test", {}), name, method=e.get("method"),
            alpha=e.get("alpha"), alpha_search=e.get("alpha_search"), diagnostics_file=e.get("diagnostics_file"),
            data_use=e.get("data_use"),
            timings=e.get("timings"))
    return rows


_METHOD_ORDER = ["weight_averaging", "task_arithmetic", "ties", "tsvm", "iso_c", "iso_cts"]


def _merge_order(name: str) -> tuple:
    """Published order: each method, then its PACT form (exact, then randomized)."""
    mid = name.split("/", 1)[1]
    base = mid.removeprefix("pact+").removesuffix("-rsvd")
    rank = _METHOD_ORDER.index(base) if base in _METHOD_ORDER else len(_METHOD_ORDER)
    return (rank, base, mid.startswith("pact+"), mid.endswith("-rsvd"))


def plain_of(name: str, names: set[str] | list[str]) -> str | None:
    """The plain method a ``pact+`` row is compared with: ``pact+X-rsvd`` -> ``X-rsvd`` or ``X``;
    ``pact+X`` -> ``X`` or ``X-rsvd``; None for other rows or when no plain row exists."""
    if not name.startswith("pact+"):
        return None
    base = name.removeprefix("pact+")
    other = base.removesuffix("-rsvd") if base.endswith("-rsvd") else f"{base}-rsvd"
    return next((c for c in (base, other) if c in names), None)


def _row_sources(row: dict[str, Any], tasks: list[str]) -> dict[str, str]:
    """Task -> the store entry whose predictions give the row's accuracy on that task."""
    if row["kind"] == "individual":
        return {t: f"finetuned/{t}" for t in tasks}
    return {t: row["entry"] for t in tasks} if row.get("entry") else {}


def _read_predictions(run_dir: Path, entry: str) -> dict[str, tuple[Any, Any]] | None:
    """``evaluate.load_predictions``, or None when the entry's predictions were not kept."""
    from pactmerge.pipeline.evaluate import load_predictions

    try:
        return load_predictions(run_dir, entry)
    except (OSError, KeyError, ValueError, PactmergeError) as exc:
        log.debug("no predictions for %s: %s", entry, exc)
        return None


def row_correctness(run_dir: Path, rows: list[dict[str, Any]], tasks: list[str]
                    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({row name: {task: bool correct vector}} for rows with predictions on every task, names without)."""
    from pactmerge.pipeline.uncertainty import correctness

    cache: dict[str, dict[str, tuple[Any, Any]] | None] = {}
    models, missing = {}, []
    for r in rows:
        sources = _row_sources(r, tasks)
        per_task = {}
        for t, entry in sources.items():
            if entry not in cache:
                cache[entry] = _read_predictions(run_dir, entry)
            if cache[entry] is None or t not in cache[entry]:
                break
            per_task[t] = cache[entry][t]
        if sources and len(per_task) == len(tasks) == len(r["accuracy"]):
            models[r["name"]] = correctness(per_task)
        else:
            missing.append(r["name"])
    return models, missing


def add_intervals(rows: list[dict[str, Any]], models: dict[str, dict[str, Any]], missing: list[str], *,
                  resamples: int, seed: int) -> dict[str, Any]:
    """Set ``avg_ci95``, ``accuracy_ci95`` and ``gain_vs_plain`` on ``rows`` from ``models``' correctness
    (see ``row_correctness``); returns the ``uncertainty`` record of results.json."""
    from pactmerge.pipeline.uncertainty import LEVEL, intervals

    names = [r["name"] for r in rows]
    pairs = {n: p for n in names if (p := plain_of(n, names)) is not None}
    error = None
    try:
        res = intervals(models, pairs, resamples=resamples, seed=seed) if models else None
    except StageError as exc:  # predictions that do not fit together (stale files): report without intervals
        log.warning("no intervals: %s", exc)
        res, error = None, str(exc)
    for r in rows:
        n = r["name"]
        if res is None or n not in res.average:
            continue
        r["avg_ci95"] = res.average[n].as_list()
        r["accuracy_ci95"] = {t: iv.as_list() for t, iv in res.per_task[n].items()}
        if abs(res.average[n].mean - r["avg_absolute"]) > 1e-6:
            log.warning("%s: accuracy from stored predictions (%.4f) differs from the stored metric (%.4f); "
                        "re-run the evaluation stage", n, res.average[n].mean, r["avg_absolute"])
        if n in res.gains:
            g = res.gains[n]
            r["gain_vs_plain"] = {"plain": pairs[n], "mean": g.mean, "ci95": g.as_list()}
    record: dict[str, Any] = {
        "method": "percentile bootstrap over test examples, resampled within each task; all rows share the "
                  "resampled indices, so gains are paired", "resamples": resamples, "seed": seed, "level": LEVEL}
    no_pair = [n for n in pairs if n not in (res.gains if res else {})]
    if error:
        record["note"] = f"no intervals: {error}"
    elif missing:
        record["without_predictions"] = missing
        record["note"] = (f"no interval for {', '.join(missing)}: per-example test predictions were not kept "
                          "(a run evaluated by an older version); `pactmerge evaluate CONFIG` adds them")
    if no_pair:
        record["without_gain"] = no_pair
    return record


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _pm(x: float | None, ci: list[float] | None) -> str:
    """``76.6 ± 2.1`` (half-width of the interval), or the bare value without one."""
    return _pct(x) if x is None or not ci else f"{100 * x:.1f} ± {50 * (ci[1] - ci[0]):.1f}"


def _gain(g: dict[str, Any] | None) -> str:
    return "" if not g else f"{100 * g['mean']:+.1f} [{100 * g['ci95'][0]:+.1f}, {100 * g['ci95'][1]:+.1f}]"


def _spread_cell(sd: dict[str, Any] | None, signed: bool = False) -> str:
    if not sd:
        return ""
    mean = f"{100 * sd['mean']:+.1f}" if signed else f"{100 * sd['mean']:.1f}"
    return mean + ("" if sd.get("std") is None else f" ± {100 * sd['std']:.1f}") + f" (n={sd['n']})"


def markdown_table(rows: list[dict[str, Any]], tasks: list[str], uncertainty: dict[str, Any] | None = None) -> str:
    """The results table; with ``uncertainty`` (``add_intervals``'s record) the average carries its interval
    and ``pact+`` rows their paired gain, with a note on how they were computed. Rows over seed
    replicates (``avg_seeds``, ``gain_seeds``) add their mean ± std over seeds next to them."""
    seeds = any(r.get("avg_seeds") for r in rows)
    head = ["model", *tasks, "avg abs.", *(["seeds: mean ± std"] if seeds else []), "avg norm.",
            "gain vs plain [95% CI]", *(["gain, seeds: mean ± std"] if seeds else []), "α"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        alpha = r.get("alpha")
        alpha_cell = "" if alpha is None else f"{alpha:.2f}"
        if r.get("alpha_seeds"):
            alpha_cell = ", ".join(f"{float(a):.2f}" for a in r["alpha_seeds"].values())
        cells = [r["name"], *(_pct(r["accuracy"].get(t)) for t in tasks), _pm(r["avg_absolute"], r.get("avg_ci95")),
                 *([_spread_cell(r.get("avg_seeds"))] if seeds else []), _pct(r["avg_normalized"]),
                 _gain(r.get("gain_vs_plain")), *([_spread_cell(r.get("gain_seeds"), True)] if seeds else []),
                 alpha_cell]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    users = [r for r in rows if r.get("data_use")]
    if users:  # merges that learn from data say which (the data-free ones use only validation data for α)
        text += "\n" + " ".join(f"`{r['name']}` saw {r['data_use']}." for r in users) + "\n"
    if uncertainty:
        text += (f"\navg abs. ± half-width of its 95% interval; gain vs plain: a `pact+` row minus its plain method, "
                 f"paired on the same test examples ({uncertainty['resamples']} bootstrap resamples of the test "
                 f"examples within each task, seed {uncertainty['seed']}).")
        if seeds:
            text += (" Over seed replicates: accuracies and intervals are those of the mean over seeds; "
                     "seeds: mean ± sample std over the replicates (n of them); α: each replicate's.")
        if uncertainty.get("note"):
            text += f" Note: {uncertainty['note']}."
        text += "\n"
    return text


def _blank(x: Any) -> Any:
    return "" if x is None else x


def csv_text(rows: list[dict[str, Any]], tasks: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "kind", *tasks, "avg_absolute", "avg_normalized", "alpha", "alpha_evaluations",
                "avg_ci95_lo", "avg_ci95_hi", "gain_vs_plain", "gain_ci95_lo", "gain_ci95_hi",
                "seeds_n", "seeds_mean", "seeds_std", "gain_seeds_mean", "gain_seeds_std"])
    for r in rows:
        evals = (r.get("alpha_search") or {}).get("evaluations", "")
        ci, g, sd = r.get("avg_ci95") or ["", ""], r.get("gain_vs_plain") or {}, r.get("avg_seeds") or {}
        gs = r.get("gain_seeds") or {}
        w.writerow([r["name"], r["kind"], *(r["accuracy"].get(t, "") for t in tasks), r["avg_absolute"],
                    "" if r["avg_normalized"] is None else r["avg_normalized"],
                    "" if r.get("alpha") is None else r["alpha"], evals, *ci, g.get("mean", ""),
                    *(g.get("ci95") or ["", ""]), sd.get("n", ""), sd.get("mean", ""), _blank(sd.get("std")),
                    gs.get("mean", ""), _blank(gs.get("std"))])
    return buf.getvalue()


def read_provenance(run_dir: Path) -> dict[str, Any] | None:
    """The run's provenance record (``run.json``'s ``provenance``), or None for older runs."""
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    prov = info.get("provenance") if isinstance(info, dict) else None
    return prov if isinstance(prov, dict) else None


def write_report(run_dir: str | Path, tasks: list[str] | None = None, *, resamples: int | None = None,
                 seed: int | None = None) -> dict[str, Path]:
    """Write the report files into ``run_dir``; returns name -> path. A directory of seed replicates
    (``seed-<s>/`` sub-directories, no store of its own) gets the report over seeds
    (``pipeline.replicates.write_replicate_report``). ``resamples`` and ``seed`` set the bootstrap
    (default ``uncertainty.RESAMPLES`` and ``uncertainty.SEED``)."""
    from pactmerge.pipeline import uncertainty

    run_dir = Path(run_dir)
    resamples = uncertainty.RESAMPLES if resamples is None else resamples
    seed = uncertainty.SEED if seed is None else seed
    if not (run_dir / "manifest.json").is_file():
        from pactmerge.pipeline.replicates import seed_dirs, write_replicate_report

        if seed_dirs(run_dir):
            return write_replicate_report(run_dir, tasks, resamples=resamples, seed=seed)
        raise StageError(f"{run_dir}: no checkpoint store here (manifest.json missing); run `pactmerge run` first")
    store = CheckpointStore(run_dir, create=False)
    if tasks is None:
        tasks = list(store.manifest.get("tasks") or sorted(n.split("/", 1)[1] for n in store.names("finetuned/")))
    rows = collect_rows(store, tasks)
    if not rows:
        raise StageError(f"{run_dir}: nothing has been evaluated yet; run `pactmerge evaluate CONFIG` first")
    models, missing = row_correctness(run_dir, rows, tasks)
    record = add_intervals(rows, models, missing, resamples=resamples, seed=seed)
    return write_outputs(run_dir, rows, tasks, record)


def write_outputs(run_dir: Path, rows: list[dict[str, Any]], tasks: list[str], uncertainty: dict[str, Any],
                  **extra: Any) -> dict[str, Path]:
    """results.json (``tasks``, ``rows``, ``uncertainty``, timings, provenance, ``extra``), results.csv,
    results.md and the plots."""
    paths = {"json": run_dir / "results.json", "csv": run_dir / "results.csv", "md": run_dir / "results.md"}
    results: dict[str, Any] = {"tasks": tasks, "rows": rows, "uncertainty": uncertainty, **extra}
    with contextlib.suppress(OSError, ValueError, AttributeError):  # seconds per stage, from pipeline.study
        results["timings"] = json.loads((run_dir / "timings.json").read_text())["stages"]
    prov = read_provenance(run_dir)
    table = markdown_table(rows, tasks, uncertainty)
    from pactmerge.pipeline.published import add_published

    table += add_published(run_dir, rows)  # the published column and the difference, when the config has one
    if prov:
        results["provenance"] = prov
        from pactmerge.provenance import footer

        table += f"\n{footer(prov)}\n"
    write_json_atomic(paths["json"], results)
    write_text_atomic(paths["csv"], csv_text(rows, tasks))
    write_text_atomic(paths["md"], table)
    from pactmerge.pipeline.plots import write_plots

    paths.update(write_plots(run_dir, rows, tasks))
    log.info("report written to %s", run_dir)
    return paths
