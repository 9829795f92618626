"""Preemption and multi-node training on a real SLURM controller.

- A fine-tune signalled as SLURM signals a job near its time limit (SIGUSR1) checkpoints at the
  end of its current step, requeues itself through Lightning's auto-requeue, resumes, and ends
  with the encoder of an uninterrupted run, byte for byte.
- The joint fine-tune as one job on two nodes (one process each, DDP over gloo): each rank trains
  on its half of the batch plan, rank 0 writes, a requeue through the scheduler resumes it, and
  its accuracy agrees with one process on the same global batch (tolerance below).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from fixtures import file_sha256
from slurm_helpers import manifest, write_study

pytestmark = pytest.mark.slurm

# One process with batch 2B and two ranks with batch B each see different batches (a batch is
# drawn from one task), so the models differ; on this 2-task study of 48 validation images per
# task (faces: 15) their mean validation accuracies agree within this absolute tolerance.
DDP_ACC_TOLERANCE = 0.15


def _wait_for(path: Path, cluster, job: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        state = cluster.state(job)
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), (state, cluster.logs())
        assert time.monotonic() < deadline, f"{path} not written after {timeout:.0f} s\n{cluster.logs()}"
        time.sleep(0.2)


def _requeued(cluster, job: str, timeout: float = 120.0) -> dict[str, str]:
    """Wait until ``job`` is requeued (pending again, Restarts >= 1), then let it start now: SLURM
    holds a requeued job back for two minutes (BeginTime)."""
    deadline = time.monotonic() + timeout
    while True:
        f = cluster.job(job)
        if int(f.get("Restarts", "0")) >= 1 and f.get("JobState") == "PENDING":
            cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
            return f
        assert time.monotonic() < deadline, (f, cluster.logs())
        time.sleep(0.2)


def _submit(cluster, script: Path, *args: str) -> str:
    return cluster.run("sbatch", "--parsable", *args, str(script), cwd=script.parent).stdout.strip().split(";")[0]


def test_signalled_fine_tune_requeues_and_resumes_bitwise(slurm_cluster, tmp_path):
    cfg = write_study(tmp_path / "study", recipe__max_steps=60, recipe__ckpt_every_n_steps=4)
    run = tmp_path / "study" / "run"
    slurm_cluster.watch = [run]
    reference = tmp_path / "uninterrupted"
    local = subprocess.Popen(["pactmerge", "finetune", str(cfg), "--task", "digits", "--output-dir", str(reference)],
                             env=slurm_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    slurm_cluster.run("pactmerge", "slurm", str(cfg), cwd=tmp_path)
    array = (run / "slurm" / "finetune_array.sbatch").read_text()
    assert "#SBATCH --requeue" in array and "#SBATCH --signal=SIGUSR1@120" in array
    job = _submit(slurm_cluster, run / "slurm" / "finetune_array.sbatch", "--array=0") + "_0"  # digits

    fit = run / "lightning" / "finetuned" / "digits"
    _wait_for(fit / "last.ckpt", slurm_cluster, job)
    # what SLURM does near the time limit (--signal=SIGUSR1@120): SIGUSR1 to the job step, here
    # at step 4 of 60
    slurm_cluster.run("scancel", "--signal=USR1", job)
    _requeued(slurm_cluster, job)
    assert slurm_cluster.wait([job])[job] == "COMPLETED", slurm_cluster.logs()
    assert int(slurm_cluster.job(job)["Restarts"]) == 1

    log = next((run / "slurm" / "logs").glob("pactmerge-finetune-*_0.out")).read_text(errors="replace")
    assert "checkpoint and requeue at the end of this training step" in log, log[-3000:]
    assert re.search(r"resuming from \S+(hpc_ckpt_\d+|last)\.ckpt", log), log[-3000:]
    assert not list(fit.glob("hpc_ckpt_*.ckpt"))  # removed once the fit finished
    out, _ = local.communicate(timeout=600)
    assert local.returncode == 0, out[-3000:]
    entry = manifest(run)["finetuned/digits"]
    assert entry["steps"] == 60
    assert file_sha256(run / entry["file"]) == file_sha256(reference / entry["file"])


def test_joint_fine_tune_on_two_nodes_resumes_after_requeue(slurm_cluster, tmp_path):
    cfg = write_study(tmp_path / "study", recipe__batch_size=8, recipe__ckpt_every_n_steps=4,
                      comparisons__joint_steps=32, cluster__num_nodes=2, cluster__devices=1, cluster__strategy="ddp")
    run = tmp_path / "study" / "run"
    slurm_cluster.watch = [run]
    single = tmp_path / "single"
    # one process, the same global batch (2 x 8)
    local = subprocess.Popen(["pactmerge", "finetune", str(cfg), "--joint", "--output-dir", str(single),
                              "--set", "recipe.batch_size=16", "--set", "cluster.num_nodes=1",
                              "--set", "cluster.strategy=auto"],
                             env=slurm_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    slurm_cluster.run("pactmerge", "slurm", str(cfg), cwd=tmp_path)
    script = run / "slurm" / "joint.sbatch"
    text = script.read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=1" in text and "srun pactmerge" in text
    job = _submit(slurm_cluster, script)
    fit = run / "lightning" / "joint"
    _wait_for(fit / "last.ckpt", slurm_cluster, job)
    first_nodes = slurm_cluster.job(job)["NodeList"]
    slurm_cluster.run("scontrol", "requeue", job)
    _requeued(slurm_cluster, job)
    assert slurm_cluster.wait([job])[job] == "COMPLETED", slurm_cluster.logs()
    assert first_nodes == "n[1-2]"

    log = next((run / "slurm" / "logs").glob(f"pactmerge-joint-{job}.out")).read_text(errors="replace")
    assert "resuming from" in log, log[-3000:]
    ranks = re.findall(r"DDP rank (\d) of 2 \(node (\d)\): (\d+) training batches per epoch", log)
    assert {(r, n) for r, n, _ in ranks} == {("0", "0"), ("1", "1")}, log[-3000:]
    out, _ = local.communicate(timeout=600)
    assert local.returncode == 0, out[-3000:]
    # each rank trains on its half of the epoch's batch plan (digits 160 and faces 135 training images)
    from pactmerge.datamodules.multi import batch_plan

    plan = batch_plan([160, 135], 8, "balanced", 0, 0)
    assert {int(b) for _, _, b in ranks} == {len(plan) // 2}
    summary = json.loads((fit / "final.json").read_text())
    single_summary = json.loads((single / "lightning" / "joint" / "final.json").read_text())
    assert summary["steps"] == single_summary["steps"] == 32
    assert abs(summary["metrics"]["val/acc"] - single_summary["metrics"]["val/acc"]) <= DDP_ACC_TOLERANCE, \
        (summary["metrics"], single_summary["metrics"])
    entries = manifest(run)
    assert "joint" in entries and entries["joint"]["steps"] == 32
    assert not [*fit.rglob("*.ckpt"), *fit.rglob("final.safetensors")]  # stored: the fit's weights files are gone
