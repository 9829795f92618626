"""``pactmerge status RUN_DIR``: what a run directory holds, what is running, and how to continue.

Reads only JSON records, file sizes and hashes: no model is loaded and neither torch, open_clip
nor Lightning is imported, so it answers in well under two seconds on a small run (the sha256
check reads every stored file; ``--no-verify`` skips it on large runs).

Per stage (prepare, finetune, joint, sequential, merge, evaluate, report) it shows whether it
is done, running (the holder of ``RUN_DIR/run.lock``: PID and host), interrupted (the fit's
last Lightning checkpoint ``lightning/<stage>/last.ckpt`` and its last logged step) or to do,
with each stored entry's sha256 check, and the command that continues the run.

``--reindex`` rebuilds ``manifest.json`` from the files and their sidecars;
``--drop-corrupt`` moves corrupt or missing entries aside so the next run redoes only them.
"""

from __future__ import annotations

import datetime as _dt
import json
import shlex
from pathlib import Path
from typing import Any

from pactmerge.commands._output import show
from pactmerge.pipeline import merge_plan
from pactmerge.pipeline.rundir import lock_state, recorded_config, require_run_info

HELP = "show which stages of a run directory are done, running or missing, and the command to continue"


def add_arguments(parser):
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (output_dir of the config)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--reindex", action="store_true",
                      help="rebuild manifest.json from the checkpoint files and their sidecars")
    mode.add_argument("--drop-corrupt", action="store_true",
                      help="move corrupt or missing entries aside (RUN_DIR/corrupt/) so the next run redoes only them")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the stored files")
    parser.add_argument("--json", action="store_true", help="print the status as one JSON object")


# -- reading ---------------------------------------------------------------------------------
# display names of the study's stages (``merge_plan.stage_entries``)
_SHOWN = {"finetune_individual": "finetune", "finetune_joint": "joint", "finetune_sequential": "sequential"}


def _last_step(fit_dir: Path) -> int | None:
    """The last step the fit's CSV logger recorded (``logs/version_0/metrics.csv``), or None."""
    path = fit_dir / "logs" / "version_0" / "metrics.csv"
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        column = lines[0].split(",").index("step")
        return max(int(float(ln.split(",")[column])) for ln in lines[1:] if ln.split(",")[column])
    except (OSError, ValueError, IndexError):
        return None


def _fit_progress(run_dir: Path, name: str) -> dict[str, Any] | None:
    """Where the fit of entry ``name`` stands in ``lightning/<name>/``: finished-unstored or its last checkpoint."""
    fit_dir = run_dir / "lightning" / name
    if not fit_dir.is_dir():
        return None
    if (fit_dir / "final.safetensors").is_file():
        return {"fit": "finished, not yet stored", "dir": str(fit_dir)}
    ckpts = sorted(fit_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        return None
    last = ckpts[-1]
    when = _dt.datetime.fromtimestamp(last.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
    return {"fit": "interrupted", "checkpoint": str(last), "saved": when, "step": _last_step(last.parent)}


# -- the status ------------------------------------------------------------------------------
def collect(run_dir: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The status of ``run_dir`` as a JSON-able mapping (what ``--json`` prints)."""
    from pactmerge.checkpoints.manifest import MANIFEST, ManifestError, check_entry, read_manifest, store_files
    from pactmerge.errors import CheckpointError

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    info = require_run_info(run_dir)
    try:
        entries: dict[str, Any] = read_manifest(run_dir)["entries"]
    except ManifestError:
        if (run_dir / MANIFEST).exists() or store_files(run_dir):
            raise
        entries = {}  # claimed, nothing stored yet
    cfg, tasks = recorded_config(info, run_dir / "run.json"), [str(t) for t in info["tasks"]]
    lock = lock_state(run_dir)

    def entry(name: str) -> dict[str, Any]:
        if name in entries:
            return {"name": name, "state": check_entry(run_dir, name, entries[name], verify=verify)}
        return {"name": name, "state": "to do", **(_fit_progress(run_dir, name) or {})}

    stages = []
    for stage, names in merge_plan.stage_entries(cfg, tasks, info.get("merges")):
        rows = [entry(n) for n in names]
        stages.append({"stage": _SHOWN.get(stage, stage), "state": _stage_state(rows), "entries": rows})
    stages.append(_evaluate_stage(entries, merge_plan.evaluation_entries(cfg, tasks, info.get("merges"))))
    report = run_dir / "results.json"
    stages.append({"stage": "report", "state": "done" if report.is_file() else "to do", "entries": []})
    if lock["state"] == "held":
        first = next((s for s in stages if s["state"] != "done"), None)
        if first is not None:
            first["state"] = "running"
    expected = {r["name"] for s in stages for r in s["entries"]}
    corrupt = [r["name"] for s in stages for r in s["entries"] if r["state"] in ("corrupt", "missing")]
    corrupt += [n for n in entries if n not in expected and check_entry(run_dir, n, entries[n], verify=verify)
                in ("corrupt", "missing")]
    config = run_dir / "config.yaml"
    finished = all(s["state"] == "done" for s in stages)
    out = {
        "run_dir": str(run_dir), "config": str(config) if config.is_file() else None, "lock": lock,
        "stages": stages, "other_entries": sorted(set(entries) - expected), "corrupt": corrupt,
        "finished": finished and not corrupt, "verified": verify,
        "continue": None if finished and not corrupt else _continue_command(run_dir, config, corrupt),
    }
    from pactmerge.pipeline.slurm_jobs import slurm_status  # standard library only

    out["slurm"] = slurm_status(run_dir, set(entries))  # None unless submitted with `pactmerge slurm`
    if out["slurm"] and out["slurm"]["resubmit"] and out["continue"] and not corrupt:
        out["continue"] = out["slurm"]["resubmit"]
    return out


def _stage_state(rows: list[dict[str, Any]]) -> str:
    states = [r["state"] for r in rows]
    if any(s in ("corrupt", "missing") for s in states):
        return "corrupt"
    if all(s in ("ok", "unchecked", "not kept") for s in states):
        return "done"
    if any(r.get("fit") == "interrupted" for r in rows):
        return "interrupted"
    done = sum(s in ("ok", "unchecked", "not kept") for s in states)
    return f"to do ({done} of {len(rows)} done)" if done else "to do"


def _evaluate_stage(entries: dict[str, Any], want: list[tuple[str, list[str]]]) -> dict[str, Any]:
    """Which of ``want`` ((entry, tasks): ``merge_plan.evaluation_entries``) have their test metrics in the manifest."""
    have = [n for n, ts in want if all(t in (((entries.get(n) or {}).get("metrics") or {}).get("test") or {})
                                       for t in ts)]
    state = "done" if len(have) == len(want) else (f"to do ({len(have)} of {len(want)} done)" if have else "to do")
    return {"stage": "evaluate", "state": state, "entries": [], "evaluated": have,
            "not_evaluated": [n for n, _ in want if n not in have]}


def _continue_command(run_dir: Path, config: Path, corrupt: list[str]) -> str:
    cmd = f"pactmerge run {shlex.quote(str(config))} --output-dir {shlex.quote(str(run_dir))}"
    if corrupt:
        cmd = f"pactmerge status --drop-corrupt {shlex.quote(str(run_dir))} && {cmd}"
    return cmd


def format_status(status: dict[str, Any]) -> str:
    lines = [f"run directory {status['run_dir']}"]
    lock = status["lock"]
    if lock["state"] == "held":
        lines.append(f"  running: process {lock.get('pid')} on {lock.get('host')} (since {lock.get('started')})")
    elif lock["state"] == "stale":
        lines.append(f"  not running: run.lock of process {lock.get('pid')} on {lock.get('host')} is left from a run "
                     "that ended without releasing it (the next run takes it over)")
    elif lock["state"] == "unreadable":
        lines.append(f"  run.lock is unreadable ({lock['path']}); delete it if no run is using this directory")
    for stage in status["stages"]:
        lines.append(f"  {stage['stage']:<10} {stage['state']}")
        for row in stage["entries"]:
            detail = row["state"]
            if row["state"] == "ok":
                detail = "done, sha256 ok"
            elif row["state"] == "unchecked":
                detail = "done (sha256 not checked)"
            elif row["state"] == "corrupt":
                detail = "CORRUPT: its sha256 differs from the manifest's (changed or truncated)"
            elif row["state"] == "missing":
                detail = "MISSING: listed in the manifest, its file is gone"
            elif row.get("fit") == "interrupted":
                step = f", last logged step {row['step']}" if row.get("step") is not None else ""
                detail = f"interrupted: {row['checkpoint']} (saved {row['saved']}{step})"
            elif row.get("fit"):
                detail = f"fit {row['fit']} ({row['dir']})"
            lines.append(f"    {row['name']:<28} {detail}")
        if stage.get("not_evaluated") and stage["state"] != "done":
            lines.append(f"    no test metrics yet: {', '.join(stage['not_evaluated'])}")
    if status["other_entries"]:
        lines.append(f"  other entries (not in this config's plan): {', '.join(status['other_entries'])}")
    if status["corrupt"]:
        lines.append(f"  corrupt or missing: {', '.join(status['corrupt'])}; "
                     f"`pactmerge status --drop-corrupt {status['run_dir']}` sets them aside, the next run redoes them")
    if status.get("slurm"):
        from pactmerge.pipeline.slurm_jobs import format_slurm

        lines += format_slurm(status["slurm"])
    if status["finished"]:
        lines.append("  finished: every stage is done")
    elif status["lock"]["state"] != "held":
        lines.append(f"  to continue: {status['continue']}")
    return "\n".join(lines)


def run(args) -> int:
    from pactmerge.checkpoints import manifest

    run_dir = Path(args.run_dir)
    if args.reindex or args.drop_corrupt:
        lock = lock_state(run_dir)
        if lock["state"] == "held":
            from pactmerge.errors import StageError

            raise StageError(f"{run_dir} is in use by process {lock.get('pid')} on {lock.get('host')}; "
                             "wait for that run to finish before changing its manifest")
    if args.reindex:
        rep = manifest.reindex(run_dir)
        show(f"{run_dir / manifest.MANIFEST}: rebuilt with {len(rep['from_sidecar']) + len(rep['partial'])} entries "
             f"({len(rep['from_sidecar'])} from their sidecars, {len(rep['partial'])} partial: no sidecar)")
        for name, why in rep["left_out"].items():
            show(f"  left out {name}: {why}")
        if rep["old_manifest"]:
            show(f"  the invalid manifest was kept as {rep['old_manifest']}")
        if not rep["identity"]:
            show("  no identity.json: the next run binds the store to the model it loads; check it is the model "
                 "this run was made with")
        return 0
    if args.drop_corrupt:
        dropped = manifest.drop_corrupt(run_dir)
        for d in dropped:
            show(f"dropped {d['name']} ({d['why']})" + (f"; file moved to {d['moved_to']}" if d["moved_to"] else ""))
        show(f"{len(dropped)} entries dropped" + ("; the next `pactmerge run` makes them again" if dropped else ""))
        return 0
    status = collect(run_dir, verify=not args.no_verify)
    show(json.dumps(status, indent=2) if args.json else format_status(status))
    return 1 if status["corrupt"] else 0
