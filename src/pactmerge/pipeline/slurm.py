"""sbatch scripts for a cluster: one job array of individual fine-tunes, the joint and the
sequential jobs, and a merge-and-evaluate job that starts when all of them succeed.

Distribution inside each job is Lightning's: ``srun`` starts one process per device
(``--ntasks-per-node`` = devices, ``--nodes`` = ``cluster.num_nodes``) and Lightning's
``SLURMEnvironment`` reads ranks and the master address from SLURM's variables. Dependencies
are SLURM's own (``afterok``); a cluster with ``DependencyParameters=kill_invalid_depend``
cancels the merge job as soon as one fine-tune fails.

Preemption: every job asks for ``--requeue``; the fit jobs also for
``--signal=SIGUSR1@<cluster.signal_seconds>``, on which Lightning's SLURM auto-requeue saves a
checkpoint and requeues the job (``pipeline.preemption``); the requeued job resumes. Job logs
are opened in append mode, so a requeued job's log continues.

``submit.sh`` records what it submitted in ``RUN_DIR/slurm/jobs.tsv`` (one line per store entry
and job id; ``pipeline.slurm_jobs`` reads it for ``pactmerge status``). The scripts are written
for what is still missing when given the entries already stored (``stored_entries``).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from pactmerge.fileio import write_text_atomic
from pactmerge.pipeline.config import RunConfig
from pactmerge.pipeline.slurm_jobs import RECORD, record_path

SCRIPTS = ("finetune_array.sbatch", "joint.sbatch", "sequential.sbatch", "merge_evaluate.sbatch", "submit.sh")


def _gpus(cfg: RunConfig) -> int:
    """GPUs per node to request: none for ``accelerator: cpu``, else the device count."""
    c = cfg.cluster
    if str(c.accelerator).lower() == "cpu":
        return 0
    return c.devices if isinstance(c.devices, int) and c.devices > 0 else 1


def _header(cfg: RunConfig, job: str, log_dir: Path, workdir: Path, *, gpus: int, nodes: int, tasks_per_node: int,
            array: str | None = None, fit: bool = True) -> list[str]:
    c = cfg.cluster
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=pactmerge-{job}",
        f"#SBATCH --chdir={workdir}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={tasks_per_node}",
        f"#SBATCH --cpus-per-task={c.cpus_per_task}",
        f"#SBATCH --time={c.time}",
        f"#SBATCH --output={log_dir}/%x-%A_%a.out" if array else f"#SBATCH --output={log_dir}/%x-%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
    ]
    if fit and c.signal_seconds > 0:
        lines.append(f"#SBATCH --signal=SIGUSR1@{c.signal_seconds}")
    if gpus > 0:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    if array:
        lines.append(f"#SBATCH --array={array}")
    if c.partition:
        lines.append(f"#SBATCH --partition={c.partition}")
    if c.account:
        lines.append(f"#SBATCH --account={c.account}")
    if c.mem:
        lines.append(f"#SBATCH --mem={c.mem}")
    lines += ["set -euo pipefail", *c.setup]
    return lines


def stored_entries(run_dir: str | Path) -> set[str]:
    """Store entries (``finetuned/<t>``, ``joint``, ``sequential``) already in ``run_dir``'s manifest
    with their file present: the complement of what a resubmission must redo."""
    run_dir = Path(run_dir)
    try:
        entries = json.loads((run_dir / "manifest.json").read_text()).get("entries", {})
    except (OSError, ValueError, AttributeError):
        return set()
    return {n for n, e in entries.items() if isinstance(e, dict) and (run_dir / str(e.get("file", ""))).is_file()}


def write_slurm_scripts(cfg: RunConfig, config_path: str | Path, tasks: list[str], out_dir: str | Path, *,
                        done: set[str] | None = None, workdir: str | Path | None = None) -> dict[str, Path]:
    """Write ``finetune_array.sbatch``, ``joint.sbatch``, ``sequential.sbatch``,
    ``merge_evaluate.sbatch`` and ``submit.sh`` into ``out_dir``; returns name -> path.

    ``submit.sh`` submits them in order and chains the last one with
    ``--dependency=afterok:<array>:<joint>:<sequential>``. ``done``: store entries that exist
    already (see ``stored_entries``); their jobs are left out (the merge job always runs: it
    merges, evaluates and reports only what is missing). Jobs run in ``workdir`` (default: the
    current directory), so relative paths of the config mean what they mean here.

    A config with a ``pool:`` fine-tunes nothing: its checkpoints are imported by ``pactmerge run``,
    so only ``merge_evaluate.sbatch`` (import, merge, evaluate, report) and ``submit.sh`` are
    written, and the merge job depends on nothing.
    """
    out = Path(out_dir).resolve()
    done = set(done or ())
    log_dir = out / "logs"
    workdir = Path(workdir or os.getcwd()).resolve()
    config = shlex.quote(str(Path(config_path).resolve()))
    run_dir = Path(cfg.output_dir)
    run_dir = (run_dir if run_dir.is_absolute() else workdir / run_dir).resolve()
    gpus = _gpus(cfg)
    per_node = gpus if gpus > 0 else (cfg.cluster.devices if isinstance(cfg.cluster.devices, int)
                                      and cfg.cluster.devices > 0 else 1)
    nodes = cfg.cluster.num_nodes
    pooled = cfg.pool is not None  # imported by the merge job, never fine-tuned
    todo = [] if pooled else [t for t in tasks if f"finetuned/{t}" not in done]
    scripts: dict[str, list[str]] = {}
    fit = dict(gpus=gpus, nodes=nodes, tasks_per_node=per_node)

    if todo:
        task_list = " ".join(shlex.quote(t) for t in todo)
        scripts["finetune_array.sbatch"] = _header(cfg, "finetune", log_dir, workdir, array=f"0-{len(todo) - 1}",
                                                   **fit) + [
            f"TASKS=({task_list})",
            'TASK="${TASKS[$SLURM_ARRAY_TASK_ID]}"',
            f'srun pactmerge finetune {config} --task "$TASK"',
        ]
    for name in ("joint", "sequential"):
        if getattr(cfg.comparisons, name) and name not in done and not pooled:
            scripts[f"{name}.sbatch"] = _header(cfg, name, log_dir, workdir, **fit) + [
                f"srun pactmerge finetune {config} --{name}",
            ]
    # merging, evaluation and the report run in one process on (at most) one GPU: `pactmerge run`
    # finds every fine-tune stored (afterok), or imports a pool's, and does the rest, as a local run would
    scripts["merge_evaluate.sbatch"] = _header(cfg, "merge", log_dir, workdir, gpus=min(gpus, 1), nodes=1,
                                               tasks_per_node=1, fit=False) + [
        f"pactmerge run {config}",
    ]
    record = record_path(run_dir)
    submit = [
        "#!/bin/bash",
        "# Submit the study: fine-tunes first, then merge-and-evaluate once all of them succeed.",
        f"# Each submitted job is recorded in {record} (read by `pactmerge status`).",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f"mkdir -p {shlex.quote(str(log_dir))} {shlex.quote(str(record.parent))}",
        f"RECORD={shlex.quote(str(record))}",
        'record() { printf \'%s\\t%s\\t%s\\n\' "$(date +%s)" "$1" "$2" >> "$RECORD"; }',
        f"record '#config' {config}",
        f"record '#scripts' {shlex.quote(str(out))}",
        'deps=""',
    ]
    if "finetune_array.sbatch" in scripts:
        submit += [
            "array=$(sbatch --parsable finetune_array.sbatch)",
            "array=${array%%;*}",
            f"TASKS=({' '.join(shlex.quote(t) for t in todo)})",
            'for i in "${!TASKS[@]}"; do record "finetuned/${TASKS[$i]}" "${array}_$i"; done',
            'deps="$deps:$array"',
        ]
    for name in ("joint", "sequential"):
        if f"{name}.sbatch" in scripts:
            submit += [f"{name}=$(sbatch --parsable {name}.sbatch)", f"{name}=${{{name}%%;*}}",
                       f'record {name} "${name}"', f'deps="$deps:${name}"']
    submit += [
        'if [ -n "$deps" ]; then',
        '    final=$(sbatch --parsable --dependency="afterok$deps" merge_evaluate.sbatch)',
        "else",
        "    final=$(sbatch --parsable merge_evaluate.sbatch)",
        "fi",
        "final=${final%%;*}",
        'record merge "$final"',
        'echo "submitted: fine-tunes ${deps#:}; merge-and-evaluate $final"',
    ]
    scripts["submit.sh"] = submit
    log_dir.mkdir(parents=True, exist_ok=True)  # sbatch does not create the directory of --output
    for stale in SCRIPTS:  # a resubmission leaves no script of a job it does not submit
        if stale not in scripts:
            (out / stale).unlink(missing_ok=True)
    paths = {}
    for name, lines in scripts.items():
        path = out / name
        write_text_atomic(path, "\n".join(lines) + "\n")
        path.chmod(0o755)
        paths[name] = path
    return paths


__all__ = ["RECORD", "SCRIPTS", "stored_entries", "record_path", "write_slurm_scripts"]
