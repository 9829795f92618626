"""Helpers of the slurm tests: the tiny study config for a CPU cluster, and the run directory's records."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CPU_CLUSTER = {"accelerator": "cpu", "cpus_per_task": 1, "time": "00:20:00"}  # one CPU per job


def load_test_module(relative: str):
    """A helper module of another test folder (``tests/...``), loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_{Path(relative).stem}", REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_study(directory: Path, **overrides) -> Path:
    """The tiny offline study (tests/study/conftest.py) for a CPU cluster, one CPU per job."""
    study = load_test_module("tests/study/conftest.py")
    directory.mkdir(parents=True, exist_ok=True)
    cfg = study.tiny_study_config(directory, **overrides)
    cfg["cluster"] = {**CPU_CLUSTER, **cfg.get("cluster", {})}
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_jobs(run_dir: Path) -> dict[str, str]:
    """Store entry -> job id of the latest submission (RUN_DIR/slurm/jobs.tsv)."""
    jobs = {}
    for line in (run_dir / "slurm" / "jobs.tsv").read_text().splitlines():
        _, name, value = line.split("\t")
        if not name.startswith("#"):
            jobs[name] = value
    return jobs


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["entries"]
