"""benchmarks/gpu_check.py: its dry run executes every part on the CPU and prints one table and a JSON
last line (so the script cannot rot without a GPU); the reading of each part's output; a GPU test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


@pytest.mark.slow
def test_dry_run_runs_every_part_and_ends_with_one_json_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run",
                           "--log-dir", str(tmp_path / "logs")], capture_output=True, text=True, cwd=ROOT,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["benchmark"] == "gpu_check" and summary["dry_run"] is True
    assert {p: v["status"] for p, v in summary["parts"].items()} == {p: "ok" for p in gpu_check.PARTS}
    parts_with_rows = {r["part"] for r in summary["rows"]}
    assert parts_with_rows == set(gpu_check.PARTS)
    items = {r["item"] for r in summary["rows"]}
    assert {"tiny b8 bf16", "tiny b8 fp32"} <= items  # bf16 autocast ran on the CPU too
    assert {"tiny T2 pact+tsvm exact", "tiny T2 pact+tsvm randomized"} <= items
    assert all(r["value"] is not None for r in summary["rows"])
    tests_row = next(r for r in summary["rows"] if r["part"] == "tests")
    assert "skipped" in tests_row["value"]  # the gpu tests were collected and skipped without CUDA
    # the table for people, just above the JSON line
    header = next(line for line in lines if line.startswith("part"))
    assert header.split() == ["part", "item", "value", "unit", "mfu_pct", "target", "met", "status"]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(f"{p}.log" for p in gpu_check.PARTS)


def test_gpu_and_dry_defaults():
    gpu = gpu_check.parse_args([])
    assert gpu.dry_run is False and gpu.device == "cuda"
    assert gpu.train_configs == ["ViT-B-32:128", "ViT-B-32:256", "ViT-B-16:128"]
    assert gpu.train_variants == ["bf16-compile", "bf16", "fp32"]
    assert gpu.merge_configs == ["ViT-B-32:8:tsvm,iso_c,iso_cts,pact+tsvm,pact+iso_c", "ViT-L-14:20:tsvm,pact+tsvm"]
    assert gpu.study_config == "configs/smoke_vitb32.yaml" and gpu.budget_s <= 480
    dry = gpu_check.parse_args(["--dry-run", "--train-steps", "3"])
    assert dry.device == "cpu" and dry.train_configs == ["tiny:8"] and dry.train_steps == 3


def test_dry_from_the_environment(monkeypatch):
    monkeypatch.setenv("DRY", "1")
    assert gpu_check.parse_args([]).dry_run is True
    monkeypatch.setenv("DRY", "0")
    assert gpu_check.parse_args([]).dry_run is False


def test_the_steps_of_a_gpu_run():
    args = gpu_check.parse_args(["--python", "PY"])
    train = gpu_check.train_steps(args)
    assert [s.label for s in train] == ["ViT-B-32 b128", "ViT-B-32 b256", "ViT-B-16 b128"]
    assert all("--data" in s.cmd and "cache" in s.cmd and "cuda" in s.cmd for s in train)
    merge = gpu_check.merge_steps(args)
    assert merge[1].cmd[merge[1].cmd.index("--tasks") + 1] == "20"
    assert "--build-device" in merge[1].cmd


def test_rows_of_each_output_and_targets():
    train_out = json.dumps({"benchmark": "train_throughput", "results": [
        {"model": "ViT-B-32", "batch": 128, "variant": "bf16-compile", "images_per_s": 5200.0, "mfu": 0.31}]})
    step = gpu_check.Step("train", "ViT-B-32 b128", [], "json")
    rows = gpu_check.rows_of(step, "noise\n" + train_out + "\n", 12.0)
    assert rows == [dict(part="train", item="ViT-B-32 b128 bf16-compile", value=5200.0, unit="img/s", mfu=0.31)]
    gpu_check.judge(rows[0], dry_run=False)
    assert rows[0]["target"] == ">= 5000" and rows[0]["met"] == "yes"

    merge_out = json.dumps({"benchmark": "merge_speed", "results": {
        "ViT-B-32/T8/pact+tsvm/randomized/cuda": {"seconds": 1.5}}})
    row = gpu_check.rows_of(gpu_check.Step("merge", "ViT-B-32 T8", [], "json"), merge_out, 30.0)[0]
    gpu_check.judge(row, dry_run=False)
    assert row["item"] == "ViT-B-32 T8 pact+tsvm randomized" and row["met"] == "no"

    tests = gpu_check.rows_of(gpu_check.Step("tests", "pytest -m gpu", [], "pytest"),
                              "....\n===== 4 passed, 2 skipped in 3.1s =====\n", 4.0)
    assert tests[0]["value"] == "4 passed, 2 skipped in 3.1s"
    study = gpu_check.rows_of(gpu_check.Step("study", "pactmerge run", [], "wall"), "", 95.04)[0]
    gpu_check.judge(study, dry_run=True)
    assert study["value"] == 95.0 and study["target"] == "<= 180" and "met" not in study


def test_without_cuda_a_real_run_refuses_and_points_to_the_dry_run(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    assert gpu_check.main([]) == 2
    assert "--dry-run" in capsys.readouterr().err


@pytest.mark.gpu
def test_cuda_merge_agrees_with_the_cpu():
    """The GPU path of the merge speed benchmark's checkpoints: a randomized PACT+TSV-M on CUDA equals the CPU's."""
    import merge_speed

    from pactmerge.merging import merge

    layout = merge_speed.vit_layout("tiny")
    pre = merge_speed.synth_pretrained(layout, 0, torch.float32)
    fts = [merge_speed.synth_finetuned(pre, t, 0, 4, torch.float32) for t in range(3)]
    params = {"svd": "randomized", "seed": 1}
    cpu = merge(pre, fts, "pact+tsvm", params=params, pact={"K": 4, "k": 2}, device="cpu")
    gpu = merge(pre, fts, "pact+tsvm", params=params, pact={"K": 4, "k": 2}, device="cuda")
    assert merge_speed.rel_err({k: v.cpu() for k, v in gpu.tau.items()}, cpu.tau) < 1e-5
