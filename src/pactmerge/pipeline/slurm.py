"""sbatch scripts for a cluster: one job array of individual fine-tunes, the joint and the
sequential jobs, and a merge-and-evaluate job that starts when all of them succeed.

Distribution inside each job is Lightning's: ``srun`` starts one process per GPU
(``--ntasks-per-node`` = devices) and Lightning's ``SLURMEnvironment`` reads ranks and the
master address from SLURM's variables. Dependencies are SLURM's own (``afterok``).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from pactmerge.fileio import write_text_atomic
from pactmerge.pipeline.config import RunConfig


def _header(cfg: RunConfig, job: str, log_dir: Path, *, gpus: int, nodes: int, array: str | None = None) -> list[str]:
    c = cfg.cluster
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=pactmerge-{job}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={max(gpus, 1)}",
        f"#SBATCH --cpus-per-task={c.cpus_per_task}",
        f"#SBATCH --time={c.time}",
        f"#SBATCH --output={log_dir}/%x-%A_%a.out" if array else f"#SBATCH --output={log_dir}/%x-%j.out",
    ]
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


def write_slurm_scripts(cfg: RunConfig, config_path: str | Path, tasks: list[str], out_dir: str | Path) -> dict[str, Path]:
    """Write ``finetune_array.sbatch``, ``joint.sbatch``, ``sequential.sbatch``,
    ``merge_evaluate.sbatch`` and ``submit.sh`` into ``out_dir``; returns name -> path.

    ``submit.sh`` submits them in order and chains the last one with
    ``--dependency=afterok:<array>:<joint>:<sequential>``.
    """
    out = Path(out_dir)
    log_dir = out / "logs"
    config = shlex.quote(str(Path(config_path).resolve()))
    devices = cfg.cluster.devices if isinstance(cfg.cluster.devices, int) else 1
    nodes = cfg.cluster.num_nodes
    scripts: dict[str, list[str]] = {}

    task_list = " ".join(shlex.quote(t) for t in tasks)
    scripts["finetune_array.sbatch"] = _header(cfg, "finetune", log_dir, gpus=devices, nodes=nodes,
                                               array=f"0-{len(tasks) - 1}") + [
        f"TASKS=({task_list})",
        'TASK="${TASKS[$SLURM_ARRAY_TASK_ID]}"',
        f'srun pactmerge finetune {config} --task "$TASK"',
    ]
    if cfg.comparisons.joint:
        scripts["joint.sbatch"] = _header(cfg, "joint", log_dir, gpus=devices, nodes=nodes) + [
            f"srun pactmerge finetune {config} --joint",
        ]
    if cfg.comparisons.sequential:
        scripts["sequential.sbatch"] = _header(cfg, "sequential", log_dir, gpus=devices, nodes=nodes) + [
            f"srun pactmerge finetune {config} --sequential",
        ]
    # merging and evaluation run in one process on one GPU
    scripts["merge_evaluate.sbatch"] = _header(cfg, "merge", log_dir, gpus=1 if devices else 0, nodes=1) + [
        f"pactmerge merge {config}",
        f"pactmerge evaluate {config}",
        f"pactmerge report {shlex.quote(str(Path(cfg.output_dir).resolve()))}",
    ]
    submit = [
        "#!/bin/bash",
        "# Submit the study: fine-tunes first, then merge-and-evaluate once all of them succeed.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f"mkdir -p {shlex.quote(str(log_dir))}",
        "array=$(sbatch --parsable finetune_array.sbatch)",
        'deps="afterok:${array%%;*}"',
    ]
    for name in ("joint", "sequential"):
        if f"{name}.sbatch" in scripts:
            submit += [f"{name}=$(sbatch --parsable {name}.sbatch)", f'deps="$deps:${{{name}%%;*}}"']
    submit += [
        'final=$(sbatch --parsable --dependency="$deps" merge_evaluate.sbatch)',
        'echo "submitted: fine-tunes $deps; merge-and-evaluate ${final%%;*}"',
    ]
    scripts["submit.sh"] = submit
    paths = {}
    for name, lines in scripts.items():
        path = out / name
        write_text_atomic(path, "\n".join(lines) + "\n")
        path.chmod(0o755)
        paths[name] = path
    return paths
