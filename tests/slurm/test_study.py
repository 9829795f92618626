"""The study on a real SLURM controller: `pactmerge slurm` + submit.sh against `pactmerge run`, a failed
array element and its resubmission, and `pactmerge status` on a SLURM run."""

from __future__ import annotations

import re
import subprocess
from datetime import datetime

import numpy as np
import pytest

from slurm_helpers import manifest, read_jobs, write_study

pytestmark = pytest.mark.slurm


def _time(fields: dict[str, str], key: str) -> datetime:
    return datetime.fromisoformat(fields[key])


def test_study_on_slurm_equals_local_run(slurm_cluster, tmp_path):
    cfg = write_study(tmp_path / "study")
    run = tmp_path / "study" / "run"
    slurm_cluster.watch = [run]
    local_dir = tmp_path / "local"
    # the same config run locally, at the same time, in the same environment (one thread per process)
    local = subprocess.Popen(["pactmerge", "run", str(cfg), "--output-dir", str(local_dir)], env=slurm_cluster.env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    sub = slurm_cluster.run("pactmerge", "slurm", str(cfg), "--submit", cwd=tmp_path)
    assert "submitted" in sub.stdout
    jobs = read_jobs(run)
    assert set(jobs) == {"finetuned/digits", "finetuned/faces", "joint", "sequential", "merge"}
    array = {jobs["finetuned/digits"].split("_")[0], jobs["finetuned/faces"].split("_")[0]}
    assert len(array) == 1  # one job array, one element per task
    states = slurm_cluster.wait(list(jobs.values()))
    assert set(states.values()) == {"COMPLETED"}, (states, slurm_cluster.logs())

    fields = {e: slurm_cluster.job(j) for e, j in jobs.items()}
    merge_start = _time(fields["merge"], "StartTime")
    for entry in ("finetuned/digits", "finetuned/faces", "joint", "sequential"):
        assert _time(fields[entry], "EndTime") <= merge_start  # afterok: merge started after all ended
    out, _ = local.communicate(timeout=600)
    assert local.returncode == 0, out[-3000:]
    assert "The `srun` command is available" not in out  # srun is on the PATH here: the hint goes to log.txt
    assert (run / "results.csv").read_bytes() == (local_dir / "results.csv").read_bytes()

    # pactmerge status on a SLURM run: every job with its SLURM id and state
    status = slurm_cluster.run("pactmerge", "status", str(run)).stdout
    for entry, job in jobs.items():
        assert re.search(rf"{re.escape(entry)}\s+job {re.escape(job)}\s+COMPLETED", status), status
    assert "finished: every stage is done" in status


def _faces_imagefolder(root):
    """scikit-image's LFW subset (the offline ``faces`` task's own images) as an ImageFolder."""
    from PIL import Image
    from skimage.data import lfw_subset

    images = np.clip(np.rint(lfw_subset() * 255.0), 0, 255).astype(np.uint8)
    for i, img in enumerate(images):
        split = "test" if i % 4 == 0 else "train"
        label = "human face" if i < 100 else "background patch"
        d = root / split / label
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:03d}.png")


def test_failed_array_element_then_resubmit_what_is_missing(slurm_cluster, tmp_path):
    faces = tmp_path / "faces_data"  # not there yet: the faces fine-tune fails
    cfg = write_study(tmp_path / "study", data__sources={"faces": str(faces)}, comparisons__joint=False,
                      comparisons__sequential=False, merge__methods=["task_arithmetic"], merge__pact=["none"])
    run = tmp_path / "study" / "run"
    slurm_cluster.watch = [run]
    slurm_cluster.run("pactmerge", "slurm", str(cfg), "--submit", cwd=tmp_path)
    jobs = read_jobs(run)
    assert set(jobs) == {"finetuned/digits", "finetuned/faces", "merge"}
    states = slurm_cluster.wait(list(jobs.values()))
    assert states[jobs["finetuned/digits"]] == "COMPLETED"
    assert states[jobs["finetuned/faces"]] == "FAILED"
    merge = slurm_cluster.job(jobs["merge"])
    assert states[jobs["merge"]] == "CANCELLED" and merge["Reason"] == "DependencyNeverSatisfied"
    assert merge["StartTime"] in ("None", "Unknown") or merge.get("RunTime") == "00:00:00"  # it never ran
    digits = manifest(run)["finetuned/digits"]

    res = slurm_cluster.run("pactmerge", "status", str(run), check=False)
    assert re.search(rf"FAILED: finetuned/faces \(job {re.escape(jobs['finetuned/faces'])}, FAILED\)", res.stdout), \
        res.stdout
    command = re.search(r"to continue: (.+)", res.stdout).group(1)
    assert command.startswith("pactmerge slurm ") and "--missing --submit" in command

    _faces_imagefolder(faces)
    slurm_cluster.run("bash", "-c", command, cwd=tmp_path)
    again = read_jobs(run)
    assert set(again) == {"finetuned/digits", "finetuned/faces", "merge"}
    assert again["finetuned/digits"] == jobs["finetuned/digits"]  # not resubmitted
    assert again["finetuned/faces"] != jobs["finetuned/faces"] and again["merge"] != jobs["merge"]
    states = slurm_cluster.wait([again["finetuned/faces"], again["merge"]])
    assert set(states.values()) == {"COMPLETED"}, (states, slurm_cluster.logs())
    entries = manifest(run)
    kept = {k: entries["finetuned/digits"][k] for k in ("file", "sha256", "created")}
    assert kept == {k: digits[k] for k in kept}  # the finished fine-tune was kept as it was
    assert "merged/task_arithmetic" in entries and (run / "results.csv").is_file()
    status = slurm_cluster.run("pactmerge", "status", str(run)).stdout
    assert "finished: every stage is done" in status
