"""``pactmerge run --jobs N``: the fine-tunes, then the merges, in N worker processes; the rest here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pactmerge.cli import main
from pactmerge.pipeline.jobs import plan, threads_per_job


def test_plan_gives_the_longest_fits_first_to_the_least_loaded_worker():
    fits = [(["--task", "a"], 60), (["--task", "b"], 60), (["--joint"], 240), (["--sequential"], 240),
            (["--task", "c"], 60), (["--task", "d"], 60)]
    # joint -> 0 (240), sequential -> 1 (240), a -> 0 (tie: the lower worker), b -> 1, c -> 0, d -> 1: 360 each
    assert plan(fits, 2) == [["--joint", "--task", "a", "--task", "c"], ["--sequential", "--task", "b", "--task", "d"]]
    # three workers: 240 | 240 | 60 x 4
    assert plan(fits, 3) == [["--joint"], ["--sequential"], ["--task", "a", "--task", "b", "--task", "c", "--task", "d"]]
    assert plan(fits[:1], 4) == [["--task", "a"]]  # idle workers are not started
    assert plan([], 2) == []


def _entries(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["entries"]


@pytest.mark.slow
def test_jobs_fit_what_one_process_fits_at_the_same_thread_count(tiny_config, tmp_path, capsys):
    threads = threads_per_job(2)
    par, ser = tmp_path / "par", tmp_path / "ser"
    assert main(["run", str(tiny_config()), "--output-dir", str(par), "--jobs", "2"]) == 0
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # one process with the workers' thread count
    try:
        assert main(["run", str(tiny_config()), "--output-dir", str(ser)]) == 0
    finally:
        torch.set_num_threads(before)
    a, b = _entries(par), _entries(ser)
    assert set(a) == set(b)
    for name in ("finetuned/digits", "finetuned/faces", "joint", "sequential"):
        assert a[name]["sha256"] == b[name]["sha256"], name
        assert a[name]["threads"] == threads, name
    for name in [n for n in a if n.startswith("merged/")]:  # built by the merge workers
        assert (a[name]["sha256"], a[name]["alpha"]) == (b[name]["sha256"], b[name]["alpha"]), name
    assert (par / "results.csv").read_text() == (ser / "results.csv").read_text()
    # two workers, each with its log; the stage is timed as a whole; the study records this
    # process's environment, not the workers'
    logs = sorted(p.name for p in (par / "logs" / "jobs").iterdir())
    assert logs == ["finetune-0.log", "finetune-1.log", "merge-0.log", "merge-1.log"]
    assert {"finetune_jobs", "merge_jobs"} <= set(json.loads((par / "timings.json").read_text())["stages"])
    prov = json.loads((par / "run.json").read_text())["provenance"]
    assert prov["environment"]["threads"]["torch_intra_op"] == before
    # a rerun finds every fit and merge stored: no worker is started
    for p in (par / "logs" / "jobs").iterdir():
        p.unlink()
    assert main(["run", str(tiny_config()), "--output-dir", str(par), "--jobs", "2"]) == 0
    assert not list((par / "logs" / "jobs").iterdir())
    assert _entries(par)["joint"]["sha256"] == a["joint"]["sha256"]


@pytest.mark.slow
def test_a_failed_worker_is_named_with_its_log_and_the_other_fits_are_kept(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    fit_dir = run / "lightning" / "finetuned" / "digits"
    fit_dir.mkdir(parents=True)
    (fit_dir / "last.ckpt").write_bytes(b"not a checkpoint")  # the digits fit cannot resume from this
    assert main(["run", str(tiny_config()), "--output-dir", str(run), "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 fine-tuning processes failed" in err and "--task digits" in err, err[-3000:]
    assert str(run / "logs" / "jobs") in err and "last.ckpt" in err
    entries = _entries(run)
    assert "finetuned/digits" not in entries
    assert {"joint", "sequential"} <= set(entries)  # the other worker's fits are stored


def test_jobs_is_refused_where_it_cannot_apply(tiny_config, capsys):
    assert main(["run", str(tiny_config()), "--jobs", "2", "--set", "seeds=[0,1]"]) == 2
    assert "--jobs runs the fine-tunes of one study" in capsys.readouterr().err
    assert main(["run", str(tiny_config()), "--jobs", "2", "--set", "cluster.devices=2",
                 "--set", "cluster.strategy=ddp"]) == 2
    assert "runs fits side by side on the CPU" in capsys.readouterr().err
    assert main(["run", str(tiny_config()), "--jobs", "0"]) == 2
    assert "give 1 or more worker processes" in capsys.readouterr().err
    assert main(["finetune", str(tiny_config())]) == 2
    assert "say what to fit" in capsys.readouterr().err


def test_merge_only_builds_the_named_merges_and_refuses_unknown_ones(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = str(tiny_config())
    assert main(["finetune", cfg, "--output-dir", str(run), "--task", "digits", "--task", "faces"]) == 0
    assert main(["merge", cfg, "--output-dir", str(run), "--only", "no_such_merge"]) == 2
    err = capsys.readouterr().err
    assert "--only no_such_merge" in err and "pact+" in err  # names the planned merges
    assert not [n for n in _entries(run) if n.startswith("merged/")]
    planned = json.loads((run / "run.json").read_text())["merges"]
    one = planned[-1]
    assert main(["merge", cfg, "--output-dir", str(run), "--only", one]) == 0
    assert [n for n in _entries(run) if n.startswith("merged/")] == [f"merged/{one}"]


@pytest.mark.slow
def test_merge_only_and_jobs_build_adamerging_variants(tiny_config, tmp_path, capsys):
    """An AdaMerging variant is a merge ``--only`` can name, and ``run --jobs`` builds it in a worker: the
    caller's ``adamerging`` stage then finds it stored, and it equals the one ``--only`` built at the
    same thread count."""
    threads = threads_per_job(2)
    cfg = str(tiny_config(merge={"methods": ["task_arithmetic"], "pact": ["none", "exact"], "alpha_grid": [0.5],
                                 "pact_params": {"K": 0, "k": 0},
                                 "adamerging": {"variants": ["none", "exact"], "steps": 4, "lr": 0.05,
                                                "batch_size": 8}},
                          comparisons={"joint": False, "sequential": False}))
    one, par = tmp_path / "one", tmp_path / "par"
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert main(["finetune", cfg, "--output-dir", str(one), "--task", "digits", "--task", "faces"]) == 0
        assert main(["merge", cfg, "--output-dir", str(one), "--only", "pact+adamerging"]) == 0
    finally:
        torch.set_num_threads(before)
    assert "pact+adamerging" in capsys.readouterr().out
    assert [n for n in _entries(one) if n.startswith("merged/")] == ["merged/pact+adamerging"]
    assert main(["merge", cfg, "--output-dir", str(one), "--only", "adamerging-rsvd"]) == 2
    assert "adamerging, pact+adamerging" in capsys.readouterr().err  # the variants of this config

    assert main(["run", cfg, "--output-dir", str(par), "--jobs", "2"]) == 0
    a = _entries(par)
    assert {"merged/adamerging", "merged/pact+adamerging", "merged/task_arithmetic"} <= set(a)
    assert a["merged/pact+adamerging"]["sha256"] == _entries(one)["merged/pact+adamerging"]["sha256"]
    worker_logs = "".join(p.read_text() for p in (par / "logs" / "jobs").glob("merge-*.log"))
    assert "merged adamerging" in worker_logs and "merged pact+adamerging" in worker_logs
