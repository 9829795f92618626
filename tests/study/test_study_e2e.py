"""``pactmerge run`` end to end on a tiny config: real Trainers, a tiny open_clip ViT, real offline data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pactmerge.cli import main

pytestmark = pytest.mark.slow

METHOD_IDS = ["task_arithmetic", "pact+task_arithmetic", "tsvm", "pact+tsvm"]


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_full_study_then_rerun_skips_everything(tiny_config, tmp_path, capsys):
    cfg = tiny_config()
    run = tmp_path / "run"
    assert main(["run", str(cfg)]) == 0
    out = capsys.readouterr().out

    entries = _manifest(run)["entries"]
    for name in ["pretrained", "finetuned/digits", "finetuned/faces", "joint", "sequential",
                 *(f"merged/{m}" for m in METHOD_IDS), "heads/digits", "heads/faces"]:
        assert name in entries, name
        assert (run / entries[name]["file"]).is_file()
    # every fit's weights live in the store alone: its Lightning checkpoints (resume state with the
    # optimizer's moments) and final.safetensors are removed once the entry is written; logs stay
    lightning = run / "lightning"
    assert not [*lightning.rglob("*.ckpt"), *lightning.rglob("final.safetensors")]
    for fit in ("finetuned/digits", "finetuned/faces", "joint", "sequential/00_digits", "sequential/01_faces"):
        assert (lightning / fit / "logs" / "version_0" / "metrics.csv").is_file(), fit
        assert (lightning / fit / "final.json").is_file(), fit
    for name in ("results.json", "results.csv", "results.md", "plots/per_task_accuracy.png",
                 "plots/alpha_curves.png", "plots/joint_sequential_merge.png", "plots/pact_intrusion_energy.png"):
        assert (run / name).is_file(), name

    results = json.loads((run / "results.json").read_text())
    names = [r["name"] for r in results["rows"]]
    assert names[:4] == ["zero-shot", "individual", "joint", "sequential"]
    assert sorted(names[4:]) == sorted(METHOD_IDS)
    for row in results["rows"]:
        assert set(row["accuracy"]) == {"digits", "faces"}
        assert all(0.0 <= a <= 1.0 for a in row["accuracy"].values())
    for m in METHOD_IDS:
        assert f"| {m} |" in out  # the printed table lists every merge
    merged = entries["merged/tsvm"]
    assert merged["alpha_search"]["evaluations"] == len(merged["alpha_search"]["curve"]) >= 1
    assert float(merged["alpha"]) in [float(a) for a in merged["alpha_search"]["curve"]]

    # a second run finds every stage done: nothing is rewritten
    before = {n: e["sha256"] for n, e in entries.items()}
    mtimes = {n: (run / e["file"]).stat().st_mtime_ns for n, e in entries.items()}
    t0 = time.perf_counter()
    assert main(["run", str(cfg)]) == 0
    after = _manifest(run)["entries"]
    assert {n: e["sha256"] for n, e in after.items()} == before
    assert {n: (run / e["file"]).stat().st_mtime_ns for n, e in after.items()} == mtimes
    assert time.perf_counter() - t0 < 60

    # report regenerates from the run directory alone
    (run / "results.md").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "results.md").is_file()


def test_other_config_refused_unless_forced(tiny_config, tmp_path, capsys):
    cfg = tiny_config()
    assert main(["finetune", str(cfg), "--task", "digits"]) == 0
    other = tiny_config(recipe__lr=0.01)
    assert main(["finetune", str(other), "--task", "digits"]) == 2
    err = capsys.readouterr().err
    assert "different config (differs at: recipe.lr)" in err and "--force" in err
    assert main(["finetune", str(other), "--task", "digits", "--force"]) == 0
    assert list(tmp_path.glob("run.old-*")), "the previous run must be moved aside, not deleted"


def test_stage_without_inputs_names_the_stage_to_run(tiny_config, capsys):
    cfg = tiny_config()
    assert main(["merge", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "pactmerge finetune" in err and "digits" in err
    assert main(["evaluate", str(cfg)]) == 2
    assert "pactmerge finetune" in capsys.readouterr().err


def test_killed_run_resumes_and_finishes(tiny_config, tmp_path):
    # long enough that the first checkpoint (step 2) comes well before the fit ends
    cfg = tiny_config(recipe={"lr": 0.001, "batch_size": 16, "warmup_steps": 2, "max_steps": 400,
                              "ckpt_every_n_steps": 2, "log_every_n_steps": 2},
                      comparisons={"joint": False, "sequential": False},
                      merge={"methods": ["task_arithmetic"], "pact": ["none"]})
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "pactmerge", "run", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = run / "lightning" / "finetuned" / "digits" / "last.ckpt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert ckpt.exists(), "no Lightning checkpoint appeared before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "finetuned/digits" not in _manifest(run)["entries"]

    assert main(["run", str(cfg)]) == 0
    entries = _manifest(run)["entries"]
    assert "finetuned/digits" in entries and "merged/task_arithmetic" in entries
    assert entries["finetuned/digits"]["steps"] == 400


def test_task_names_in_any_spelling_work_end_to_end(tiny_config, tmp_path, capsys):
    cfg = tiny_config(tasks={"names": ["Digits", "FACES"]}, comparisons={"joint": False, "sequential": False},
                      merge={"methods": ["task_arithmetic"], "pact": ["none"]})
    run = tmp_path / "run"
    assert main(["run", str(cfg)]) == 0
    entries = _manifest(run)["entries"]
    for name in ("heads/digits", "heads/faces", "finetuned/digits", "finetuned/faces", "merged/task_arithmetic"):
        assert name in entries, name
    rows = json.loads((run / "results.json").read_text())["rows"]
    assert all(set(r["accuracy"]) == {"digits", "faces"} for r in rows)
    timings = json.loads((run / "timings.json").read_text())["stages"]
    assert {"prepare", "finetune_individual", "merge", "evaluate"} <= set(timings)
    before = entries["finetuned/digits"]["sha256"]
    assert main(["finetune", str(cfg), "--task", "DIGITS"]) == 0  # the same task under another spelling: done
    assert _manifest(run)["entries"]["finetuned/digits"]["sha256"] == before
