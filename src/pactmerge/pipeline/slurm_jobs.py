"""The SLURM jobs of a run directory and their states (standard library only: ``pactmerge status``
reads this without importing torch).

``submit.sh`` (``pipeline.slurm``) appends one line per submitted job to
``RUN_DIR/slurm/jobs.tsv``: ``<unix time> TAB <store entry or 'merge'> TAB <job id>``, array
elements as ``<array id>_<index>``; lines ``#config`` and ``#scripts`` name the config and the
scripts directory of each submission. The latest line per entry wins (a resubmission replaces
the jobs it resubmits and keeps the others).

States come from ``scontrol show job`` (jobs the controller still remembers; no accounting
needed), else from ``sacct`` where accounting is set up; otherwise they are ``UNKNOWN``.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

RECORD = "jobs.tsv"
FAILED_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                 "PREEMPTED")
ACTIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "STOPPED", "SIGNALING", "STAGE_OUT")


def record_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "slurm" / RECORD


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``{"jobs": {entry: job id}, "config": path, "scripts": dir}`` of the latest submissions, or None."""
    path = record_path(run_dir)
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    jobs: dict[str, str] = {}
    meta: dict[str, str] = {}
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        _, name, value = parts
        if name.startswith("#"):
            meta[name[1:]] = value
        else:
            jobs[name] = value
    return {"jobs": jobs, "config": meta.get("config"), "scripts": meta.get("scripts"), "path": str(path)}


def _run(cmd: list[str]) -> str | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def _parse_scontrol(text: str) -> dict[str, dict[str, str]]:
    """``scontrol show job -o`` (one job per line, ``Key=Value`` pairs) -> id -> fields; array
    elements are keyed ``<array id>_<index>`` as well as by their own id."""
    jobs: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        fields: dict[str, str] = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep and key not in fields:
                fields[key] = value
        if "JobId" not in fields:
            continue
        jobs[fields["JobId"]] = fields
        if fields.get("ArrayJobId") and fields.get("ArrayTaskId"):
            for index in _indices(fields["ArrayTaskId"]):  # a pending array is one line: "0-3", "0,2%1"
                jobs[f"{fields['ArrayJobId']}_{index}"] = fields
    return jobs


def _indices(spec: str) -> list[str]:
    out: list[str] = []
    for part in spec.split("%")[0].split(","):
        lo, sep, hi = part.partition("-")
        if sep and lo.isdigit() and hi.split(":")[0].isdigit():
            out += [str(i) for i in range(int(lo), int(hi.split(":")[0]) + 1)]
        elif part.isdigit():
            out.append(part)
    return out


def job_states(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Job id -> ``{"state", "reason", "exit_code", "restarts"}`` (state ``UNKNOWN`` when neither
    ``scontrol`` nor ``sacct`` knows the job)."""
    out: dict[str, dict[str, str]] = {}
    text = _run(["scontrol", "show", "job", "-o"])
    known = _parse_scontrol(text) if text else {}
    for jid in job_ids:
        f = known.get(jid)
        if f is not None:
            out[jid] = {"state": f.get("JobState", "UNKNOWN"), "reason": f.get("Reason", "None"),
                        "exit_code": f.get("ExitCode", ""), "restarts": f.get("Restarts", "0")}
    rest = [j for j in job_ids if j not in out]
    if rest:
        text = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode", "-j", ",".join(rest)]) or ""
        for line in text.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[0] in rest:
                out[parts[0]] = {"state": parts[1].split()[0], "reason": "None", "exit_code": parts[2],
                                 "restarts": "?"}
    for jid in job_ids:
        out.setdefault(jid, {"state": "UNKNOWN", "reason": "no longer known to scontrol or sacct",
                             "exit_code": "", "restarts": "?"})
    return out


def slurm_status(run_dir: str | Path, stored: set[str]) -> dict[str, Any] | None:
    """The SLURM side of ``pactmerge status``: each recorded job with its state, the failed ones,
    and the command that resubmits what is missing (None when the run was not submitted to SLURM).

    ``stored``: the entries in the store (a fine-tune whose entry exists is done, whatever its job says).
    """
    rec = read_record(run_dir)
    if rec is None or not rec["jobs"]:
        return None
    states = job_states(sorted(set(rec["jobs"].values())))
    rows = []
    for entry, jid in rec["jobs"].items():
        rows.append({"entry": entry, "job": jid, **states[jid]})
    failed = [r for r in rows if r["state"] in FAILED_STATES and r["entry"] not in stored]
    active = [r["entry"] for r in rows if r["state"] in ACTIVE_STATES]
    command = None
    if rec.get("config"):
        command = f"pactmerge slurm {shlex.quote(rec['config'])} --missing --submit"
        if rec.get("scripts") and Path(rec["scripts"]) != Path(run_dir).resolve() / "slurm":
            command += f" --out {shlex.quote(rec['scripts'])}"
    return {"record": rec["path"], "jobs": rows, "failed": failed, "active": active, "resubmit": command}


def format_slurm(status: dict[str, Any]) -> list[str]:
    """Lines for ``pactmerge status``."""
    lines = [f"  slurm jobs ({status['record']}):"]
    for r in status["jobs"]:
        detail = r["state"]
        if r["state"] in FAILED_STATES and r.get("reason") not in (None, "", "None"):
            detail += f" ({r['reason']})"
        if r.get("exit_code") and r["exit_code"] not in ("0:0", ""):
            detail += f", exit code {r['exit_code']}"
        if r.get("restarts") not in (None, "", "0", "?"):
            detail += f", requeued {r['restarts']}x"
        lines.append(f"    {r['entry']:<28} job {r['job']:<12} {detail}")
    for r in status["failed"]:
        lines.append(f"  FAILED: {r['entry']} (job {r['job']}, {r['state']})")
    if status["active"]:
        lines.append(f"  queued or running: {', '.join(status['active'])}; let them end before resubmitting")
    return lines
