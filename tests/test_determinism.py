"""The same config and seed give the same table, bit for bit, on the CPU; and what a run prints.

A tiny study (a small open_clip ViT, two real offline tasks, a few steps of individual, joint
and sequential fine-tuning, an exact and a randomized merge) runs twice, each in a fresh
process with a different Python hash seed and in a fresh output directory. Every metric in
``results.json`` and every stored encoder's sha256 must match. Any unseeded generator (data
order, augmentation, joint sampling, heads, randomized SVD test matrices) or any dependence
on ``hash()`` makes the two runs differ. The first run's console is checked too: stage lines
and the table, none of the third-party noise a run used to print (that goes to ``log.txt``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures import tiny_vit_config


def _config(tmp_path: Path, run: str) -> Path:
    model_cfg = tiny_vit_config(tmp_path, "tiny_vit_det")
    cfg = {
        "output_dir": str(tmp_path / run),
        "seed": 3,
        "model": {"name": "tiny_vit_det", "config": str(model_cfg)},
        "tasks": {"names": ["digits", "faces"]},
        # each run builds its own cache: the second run must not depend on the first's files
        "data": {"eval_batch_size": 64, "max_train": 96, "max_eval": 32, "cache_dir": str(tmp_path / f"cache-{run}"),
                 "num_workers": 0},
        "recipe": {"lr": 0.001, "batch_size": 16, "warmup_steps": 1, "max_steps": 4, "ckpt_every_n_steps": 2,
                   "log_every_n_steps": 2, "seed": 5},
        "comparisons": {"joint_steps": 4, "joint_sampling": "proportional"},
        "merge": {"methods": ["tsvm"], "pact": ["none", "randomized"], "pact_params": {"K": 4, "k": 2},
                  "alpha_grid": [0.5, 1.0, 1.5]},
    }
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(config: Path, hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "COLUMNS": "120"}
    proc = subprocess.run([sys.executable, "-m", "pactmerge", "run", str(config)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _metrics(results: dict) -> list[dict]:
    """The rows of results.json without their wall-clock timings."""
    return [{k: v for k, v in row.items() if k != "timings"} for row in results["rows"]]


def _hashes(run_dir: Path) -> dict[str, str]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    entries = manifest.get("entries", manifest)
    return {name: e["sha256"] for name, e in entries.items() if isinstance(e, dict) and "sha256" in e}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("determinism")
    console = _run(_config(tmp, "a"), "1")
    _run(_config(tmp, "b"), "2")
    return tmp / "a", tmp / "b", console


@pytest.mark.slow
def test_two_runs_of_one_config_give_identical_results(two_runs):
    a, b, _ = two_runs
    ha, hb = _hashes(a), _hashes(b)
    assert any(n.startswith("merged/") and n.endswith("-rsvd") for n in ha), sorted(ha)
    assert ha == hb, {n: (ha.get(n), hb.get(n)) for n in set(ha) | set(hb) if ha.get(n) != hb.get(n)}
    ra = json.loads((a / "results.json").read_text())
    rb = json.loads((b / "results.json").read_text())
    assert _metrics(ra) == _metrics(rb)
    table = [line for line in (a / "results.md").read_text().splitlines() if line.startswith("|")]
    assert table == [line for line in (b / "results.md").read_text().splitlines() if line.startswith("|")]
    assert ra["provenance"]["environment"]["packages"]["torch"]
    assert ra["provenance"]["seed"] == 3


NOISE = ("LeafSpec", "litlogger", "litmodels", "limit_val_batches", "Epoch 0/-2", "GPU available",
         "TPU available", "project.license", "smaller than the logging interval")


@pytest.mark.slow
def test_console_shows_stages_and_table_not_library_noise(two_runs):
    a, _, console = two_runs
    for noise in NOISE:
        assert noise not in console, noise
    assert "| model |" in console and "| pact+tsvm-rsvd |" in console
    assert "finetuned/digits" in console
    log_txt = (a / "log.txt").read_text()
    assert "pytorch_lightning" in log_txt  # third-party lines are kept, in the run's log
    metrics = (a / "lightning" / "finetuned" / "digits" / "logs" / "version_0" / "metrics.csv").read_text()
    assert "val/acc" in metrics.splitlines()[0] and "train/loss" in metrics.splitlines()[0]
