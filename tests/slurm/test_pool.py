"""A study that imports published checkpoints (``pool:``) on a real SLURM controller: one job, no fine-tunes."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from slurm_helpers import CPU_CLUSTER, load_test_module, read_jobs

pytestmark = pytest.mark.slurm


def test_pool_study_on_slurm_is_one_merge_job_equal_to_a_local_run(slurm_cluster, tmp_path):
    builders = load_test_module("tests/pool/pool_builders.py")
    tv = tmp_path / "tv"
    builders.task_vectors_pickles(tv)
    cfg = builders.pool_config(tmp_path, {"pretrained": str(tv / "zeroshot.pt"), "legacy_pickle": True,
                                          "finetuned": {"digits": str(tv / "Digits" / "finetuned.pt"),
                                                        "faces": str(tv / "Faces" / "finetuned.pt")}})
    data = yaml.safe_load(cfg.read_text())
    data["cluster"] = dict(CPU_CLUSTER)
    cfg.write_text(yaml.safe_dump(data))
    run, local_dir = tmp_path / "run", tmp_path / "local"
    slurm_cluster.watch = [run]
    local = subprocess.Popen(["pactmerge", "run", str(cfg), "--output-dir", str(local_dir)], env=slurm_cluster.env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    sub = slurm_cluster.run("pactmerge", "slurm", str(cfg), "--submit", cwd=tmp_path)
    assert "submitted" in sub.stdout
    jobs = read_jobs(run)
    assert set(jobs) == {"merge"}  # nothing to fine-tune: the merge job imports the pool
    states = slurm_cluster.wait(list(jobs.values()))
    assert set(states.values()) == {"COMPLETED"}, (states, slurm_cluster.logs())
    out, _ = local.communicate(timeout=600)
    assert local.returncode == 0, out[-3000:]
    results = json.loads((run / "results.json").read_text())
    names = {r["name"] for r in results["rows"]}
    assert {"individual", "task_arithmetic", "pact+tsvm"} <= names and "joint" not in names
    assert (run / "results.csv").read_bytes() == (local_dir / "results.csv").read_bytes()
    status = slurm_cluster.run("pactmerge", "status", str(run)).stdout
    assert "finished: every stage is done" in status, status
