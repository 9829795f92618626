"""The run directory: claimed only once a config resolves, corrupt run.json named, one run at a time,
and ``--dry-run`` that prints the plan and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pactmerge.cli import main
from pactmerge.errors import ConfigError, StageError
from pactmerge.pipeline.config import load_config
from pactmerge.pipeline.context import LOCK_FILE, RunContext, RunLock, claim, resolve_tasks


def _cfg(tmp_path, *extra):
    return load_config(None, [f"output_dir={tmp_path / 'run'}", "tasks.names=[digits]", *extra])


def test_task_names_are_normalised_once(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "tasks.names=[MNIST, fashion-mnist]"])
    assert [t.key for t in resolve_tasks(cfg)] == ["mnist", "fashion_mnist"]
    ctx = RunContext(cfg)
    assert ctx.task_key("Fashion-MNIST") == "fashion_mnist"
    with pytest.raises(ConfigError, match="not part of this config's tasks: mnist, fashion_mnist"):
        ctx.task_key("digits")
    with pytest.raises(ConfigError, match="twice"):
        resolve_tasks(load_config(None, ["tasks.names=[mnist, MNIST]"]))


def test_failing_config_leaves_no_directory(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["run", "--output-dir", str(run), "--set", "tasks.names=[digits]",
               "--set", f"model.weights={tmp_path / 'absent.safetensors'}"])
    assert rc == 2
    assert "absent.safetensors" in capsys.readouterr().err
    assert not run.exists()


@pytest.mark.parametrize("text", ["{not json", "[]"])
def test_corrupt_run_json_is_named(tmp_path, text):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(text)
    with pytest.raises(ConfigError, match=r"run\.json: unreadable run description.*--force"):
        claim(RunContext(_cfg(tmp_path)))


def test_directory_without_finished_stage_never_blocks(tmp_path):
    claim(RunContext(_cfg(tmp_path)))
    claim(RunContext(_cfg(tmp_path, "recipe.lr=0.1")))  # nothing finished: moved aside, no error
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["recipe"]["lr"] == 0.1
    assert list(tmp_path.glob("run.old-*"))


def test_second_run_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        holder = json.loads((run / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(StageError, match=rf"in use by process {os.getpid()} on {holder['host']}"):
            RunLock(run).acquire()
    assert not (run / LOCK_FILE).exists() and not run.exists()  # released; the directory it made is gone


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (run / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with RunLock(run):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["run", "--dry-run", "--output-dir", str(run), "--set", "tasks.names=[Digits, faces]",
               "--set", "merge.methods=all", "--set", "merge.pact_params={K: 3}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert not run.exists()
    assert "digits" in out and "offline:digits" in out and "train " in out  # source and split sizes
    for planned in ("weight_averaging", "iso_cts", "pact+tsvm"):
        assert f"  {planned} " in out
    assert '"K": 3' in out
    for stage in ("prepare", "finetune_individual", "finetune_joint", "finetune_sequential", "merge", "evaluate"):
        assert f"  {stage} " in out


def test_open_study_in_another_directory_claims_it_after_resolving(tmp_path):
    from pactmerge.pipeline.merge_plan import plan_merges
    from pactmerge.pipeline.rundir import read_run_info
    from pactmerge.pipeline.study import open_study

    cfg = _cfg(tmp_path, "merge.methods=[ties]", "merge.pact=[none, randomized]")
    from pactmerge.errors import CheckpointError

    with pytest.raises(CheckpointError, match="absent.safetensors"):  # a bad model: no directory is made
        open_study(load_config(None, [f"model.weights={tmp_path / 'absent.safetensors'}"]), run_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    ctx = open_study(cfg, run_dir=tmp_path / "elsewhere", config_text="seed: 0\n")
    assert ctx.run_dir == tmp_path / "elsewhere" and not (tmp_path / "run").exists()
    info = read_run_info(ctx.run_dir)
    assert info["merges"] == [p.id for p in plan_merges(cfg.merge)] == ["ties", "pact+ties-rsvd"]
    assert info["config"]["output_dir"] == str(tmp_path / "elsewhere") and info["tasks"] == ["digits"]
    assert (ctx.run_dir / "config.yaml").read_text() == "seed: 0\n"


_CLAIM_WITH_THREADS = """
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
from pactmerge.pipeline.config import load_config
from pactmerge.pipeline.context import RunContext, claim
claim(RunContext(load_config(None, [f"output_dir={sys.argv[1]}", "tasks.names=[digits]"])), quiet=True)
"""


def test_claims_wait_for_the_record_lock_and_keep_every_history_line(tmp_path):
    """Worker processes that claim the directory at once (``run --jobs``, array tasks) each record their
    environment: a claim waits while another process holds the record, and two concurrent claims
    with other thread counts leave two history lines, not one."""
    from pactmerge.pipeline.rundir import record_lock

    run = tmp_path / "run"
    claim(RunContext(_cfg(tmp_path)))
    record = run / "run.json"
    before = record.read_text()

    def start(threads):
        return subprocess.Popen([sys.executable, "-c", _CLAIM_WITH_THREADS, str(run), str(threads)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    with record_lock(run):
        waiting = start(1)
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=8)  # imports and model load take a few seconds; then it waits here
        assert record.read_text() == before
    out, _ = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, out
    history = json.loads(record.read_text())["provenance_history"]
    assert len(history) == 1 and any("threads" in key for key in history[0]["changed"])

    both = [start(3), start(5)]
    for proc in both:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    info = json.loads(record.read_text())
    assert len(info["provenance_history"]) == 3
    assert info["provenance"]["environment"]["threads"]["torch_intra_op"] in (3, 5)


def test_a_claim_waiting_on_a_directory_moved_aside_locks_the_new_one(tmp_path):
    """A claimant waiting for the record lock while the holder moves the directory aside (a claim of
    another config) must not enter on the old directory's lock file: it locks the new directory's
    and waits for whoever holds that one."""
    import threading
    import time

    from pactmerge.pipeline.rundir import move_aside, record_lock

    run = tmp_path / "run"
    run.mkdir()
    entered = threading.Event()

    def waiter():
        with record_lock(run):
            entered.set()

    old = record_lock(run)
    old.__enter__()
    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)  # the waiter blocks on the old file
    assert not entered.is_set()
    aside = move_aside(run)
    new = record_lock(run)
    new.__enter__()  # a third claimant takes the new directory's record
    old.__exit__(None, None, None)  # the first holder is done: the waiter wakes on the old file
    assert not entered.wait(timeout=1.0)  # and must now wait for the new directory's holder
    new.__exit__(None, None, None)
    assert entered.wait(timeout=10)
    thread.join(timeout=10)
    assert (aside / ".run.json.lock").exists() and (run / ".run.json.lock").exists()
