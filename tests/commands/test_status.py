"""``pactmerge status``: finished, interrupted and corrupted run directories, reindex and drop-corrupt.

The run directories are built with the real ``CheckpointStore`` (small safetensors entries)
and the records a study writes (``run.json``, ``config.yaml``, ``run.lock``, Lightning's
``last.ckpt`` and CSV log), not by training, so the tests take a second.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from pactmerge.checkpoints import CheckpointStore, ManifestError
from pactmerge.cli import main
from pactmerge.commands.status import collect, format_status
from pactmerge.errors import CheckpointError

TASKS = ["digits", "faces"]
CONFIG = {"output_dir": "set-below", "tasks": {"names": TASKS},
          "comparisons": {"zero_shot": True, "joint": True, "sequential": False},
          "merge": {"methods": ["task_arithmetic", "tsvm"], "pact": ["none", "exact"]}}
MERGED = ["merged/task_arithmetic", "merged/tsvm", "merged/pact+task_arithmetic", "merged/pact+tsvm"]


def _state(seed):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(8, 4, generator=g), "b": torch.randn(8, generator=g)}


def make_run(root, *, stop_after=None):
    """A run directory of CONFIG: every entry stored (with test metrics and the report), or up to ``stop_after``."""
    root.mkdir(parents=True)
    cfg = {**CONFIG, "output_dir": str(root)}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    (root / "run.json").write_text(json.dumps({"identity": {}, "tasks": TASKS, "config": cfg}))
    store = CheckpointStore(root)
    store.bind({"name": "tiny"}, "0" * 64)
    order = (["pretrained"] + [f"heads/{t}" for t in TASKS] + [f"finetuned/{t}" for t in TASKS] + ["joint"]
             + MERGED)
    for i, name in enumerate(order):
        if name.startswith("heads/"):
            store.save_head(name.split("/")[1], torch.randn(10, 4))
        else:
            store.save_state(name, _state(i), {"task": name.split("/")[-1]})
        if name == stop_after:
            return store
    for name, tasks in [("pretrained", TASKS), ("finetuned/digits", ["digits"]), ("finetuned/faces", ["faces"]),
                        ("joint", TASKS), *[(m, TASKS) for m in MERGED]]:
        store.update_meta(name, metrics={"test": {t: 0.5 for t in tasks}})
    (root / "results.json").write_text("{}")
    return store


def _by_name(status):
    return {r["name"]: r for s in status["stages"] for r in s["entries"]}


def _stages(status):
    return {s["stage"]: s["state"] for s in status["stages"]}


def test_finished_run(tmp_path, capsys):
    make_run(tmp_path / "run")
    status = collect(tmp_path / "run")
    assert status["finished"] and status["continue"] is None and not status["corrupt"]
    assert set(_stages(status).values()) == {"done"}
    assert {n: r["state"] for n, r in _by_name(status).items()} == {
        n: "ok" for n in ["pretrained", "heads/digits", "heads/faces", "finetuned/digits", "finetuned/faces", "joint",
                          *MERGED]}
    assert main(["status", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "finished: every stage is done" in out and "finetuned/faces" in out and "sha256 ok" in out


def test_interrupted_run_shows_checkpoint_lock_and_command(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run, stop_after="finetuned/digits")
    fit = run / "lightning" / "finetuned" / "faces"
    (fit / "logs" / "version_0").mkdir(parents=True)
    (fit / "last.ckpt").write_bytes(b"lightning checkpoint")
    (fit / "logs" / "version_0" / "metrics.csv").write_text("epoch,step,train/loss\n0,19,1.2\n0,39,0.8\n")

    status = collect(run)
    assert _stages(status) == {"prepare": "done", "finetune": "interrupted", "joint": "to do", "merge": "to do",
                               "evaluate": "to do", "report": "to do"}
    faces = _by_name(status)["finetuned/faces"]
    assert faces["fit"] == "interrupted" and faces["checkpoint"] == str(fit / "last.ckpt") and faces["step"] == 39
    assert status["continue"] == f"pactmerge run {run / 'config.yaml'} --output-dir {run}"
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"interrupted: {fit / 'last.ckpt'}" in out and "last logged step 39" in out
    assert f"to continue: pactmerge run {run / 'config.yaml'} --output-dir {run}" in out

    # while a run holds the lock: its PID and host, and the stage it is in
    (run / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                              "started": "2026-12-02T10:00:00+0000", "argv": ["pactmerge", "run"]}))
    status = collect(run)
    assert status["lock"]["state"] == "held" and _stages(status)["finetune"] == "running"
    main(["status", str(run)])
    assert f"running: process {os.getpid()} on {socket.gethostname()}" in capsys.readouterr().out
    # a lock left by a process that is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / "run.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    assert collect(run)["lock"]["state"] == "stale"


def test_corrupt_entries_are_named_and_only_they_are_redone(tmp_path, capsys):
    run = tmp_path / "run"
    store = make_run(run)
    flipped = run / "finetuned" / "digits.safetensors"
    data = bytearray(flipped.read_bytes())
    data[-3] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated = run / "merged" / "tsvm.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:40])

    with pytest.raises(CheckpointError, match=rf"{flipped}: sha256 .* --drop-corrupt {run}"):
        store.load_state("finetuned/digits")
    status = collect(run)
    assert sorted(status["corrupt"]) == ["finetuned/digits", "merged/tsvm"] and not status["finished"]
    assert _stages(status)["finetune"] == "corrupt" and _stages(status)["merge"] == "corrupt"
    assert main(["status", str(run)]) == 1
    out = capsys.readouterr().out
    assert "finetuned/digits" in out and "CORRUPT" in out
    assert f"pactmerge status --drop-corrupt {run} && pactmerge run" in out

    assert main(["status", "--drop-corrupt", str(run)]) == 0
    assert "dropped finetuned/digits (corrupt)" in capsys.readouterr().out
    assert not flipped.exists() and list((run / "corrupt").rglob("digits.safetensors"))
    after = collect(run)
    assert not after["corrupt"]
    todo = sorted(n for n, r in _by_name(after).items() if r["state"] != "ok")
    assert todo == ["finetuned/digits", "merged/tsvm"]  # the next run redoes just these
    reopened = CheckpointStore(run, create=False)
    assert not reopened.has("finetuned/digits") and reopened.has("finetuned/faces")


@pytest.mark.parametrize("damage", ["deleted", "bad json", "a list"])
def test_lost_manifest_is_refused_then_reindexed(tmp_path, capsys, damage):
    run = tmp_path / "run"
    store = make_run(run)
    before = store.manifest
    manifest = run / "manifest.json"
    if damage == "deleted":
        manifest.unlink()
    else:
        manifest.write_text("{not json" if damage == "bad json" else "[]")
    assert main(["status", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(manifest) in err and f"pactmerge status --reindex {run}" in err
    with pytest.raises(ManifestError, match="--reindex"):  # a study would not start afresh over finished work
        CheckpointStore(run)
    assert main(["status", "--reindex", str(run)]) == 0
    out = capsys.readouterr().out
    assert "rebuilt with 10 entries (10 from their sidecars, 0 partial" in out
    rebuilt = json.loads(manifest.read_text())
    assert rebuilt["entries"] == before["entries"] and rebuilt["identity"] == before["identity"]
    if damage != "deleted":
        assert list(run.glob("manifest.json.invalid-*"))
    assert collect(run)["finished"]
    assert main(["status", "--reindex", str(run)]) == 2  # a valid manifest is not rebuilt (it could lose metadata)
    assert "valid (10 entries), so there is nothing to rebuild" in capsys.readouterr().err


def test_claimed_directory_without_entries_is_all_to_do(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = {**CONFIG, "output_dir": str(run)}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "run.json").write_text(json.dumps({"identity": {}, "tasks": TASKS, "config": cfg}))
    status = collect(run)
    assert set(_stages(status).values()) == {"to do"} and not status["finished"]


def test_reindex_of_a_run_without_sidecars_is_partial(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run)
    for sidecar in run.rglob("*.meta.json"):
        sidecar.unlink()
    (run / "identity.json").unlink()
    (run / "manifest.json").unlink()
    assert main(["status", "--reindex", str(run)]) == 0
    out = capsys.readouterr().out
    assert "rebuilt with 6 entries (0 from their sidecars, 6 partial: no sidecar)" in out
    assert "left out merged/tsvm: no sidecar" in out and "no identity.json" in out
    status = collect(run)
    assert _stages(status)["finetune"] == "done" and _stages(status)["merge"] == "to do"
    assert _stages(status)["evaluate"] == "to do"  # metrics were in the lost manifest only
    entry = CheckpointStore(run, create=False).entry("finetuned/digits")
    assert entry["task"] == "digits" and entry["tensors"] == 2 and entry["reindexed"].startswith("partial")


@pytest.mark.parametrize("text", ["{oops", "[]"])
def test_corrupt_run_json_is_a_clear_error(tmp_path, capsys, text):
    run = tmp_path / "run"
    make_run(run)
    (run / "run.json").write_text(text)
    assert main(["status", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'run.json'}: unreadable run description" in err and "pactmerge run" in err
    assert "Traceback" not in err


def test_sidecars_follow_the_manifest(tmp_path):
    store = make_run(tmp_path / "run", stop_after="finetuned/digits")
    sidecar = json.loads((tmp_path / "run" / "finetuned" / "digits.meta.json").read_text())
    assert sidecar == {"name": "finetuned/digits", **store.entry("finetuned/digits")}
    store.update_meta("finetuned/digits", metrics={"test": {"digits": 0.9}})
    sidecar = json.loads((tmp_path / "run" / "finetuned" / "digits.meta.json").read_text())
    assert sidecar["metrics"] == {"test": {"digits": 0.9}}
    assert json.loads((tmp_path / "run" / "identity.json").read_text()) == store.manifest["identity"]


def test_status_imports_no_model_code(tmp_path):
    run = tmp_path / "run"
    make_run(run, stop_after="joint")
    code = ("import json, sys, time\nt = time.perf_counter()\nfrom pactmerge.cli import main\n"
            f"rc = main(['status', {str(run)!r}])\n"
            "print(json.dumps({'rc': rc, 's': time.perf_counter() - t,"
            " 'loaded': [m for m in ('torch', 'open_clip', 'pytorch_lightning', 'lightning') if m in sys.modules]}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0 and result["loaded"] == [], proc.stderr


def _claimed(tmp_path, *overrides):
    """A run directory claimed by the real ``rundir.claim`` (nothing stored yet), and its config."""
    from pactmerge.pipeline.config import load_config
    from pactmerge.pipeline.context import RunContext
    from pactmerge.pipeline.rundir import claim

    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "tasks.names=[digits, faces]", *overrides])
    claim(RunContext(cfg))
    return tmp_path / "run", cfg


def test_status_of_any_claimed_directory_never_imports_torch(tmp_path):
    # methods: all and PACT keys given flat in method_params need the method registry to plan; the
    # claim records the merge ids, so status reads them instead of planning
    run, cfg = _claimed(tmp_path, "merge.methods=all", "merge.pact=[none, randomized]",
                        "merge.method_params={pact+ties: {K: 3, k: 2}}")
    code = ("import json, sys\nfrom pactmerge.cli import main\n"
            f"rc = main(['status', '--json', {str(run)!r}])\n"
            "print(json.dumps({'rc': rc, 'loaded': [m for m in ('torch', 'open_clip', 'pytorch_lightning',"
            " 'lightning', 'safetensors.torch') if m in sys.modules]}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    result, status = json.loads(lines[-1]), json.loads("\n".join(lines[:-1]))
    assert result == {"rc": 0, "loaded": []}, proc.stderr
    from pactmerge.pipeline.merge_plan import plan_merges

    merge = next(s for s in status["stages"] if s["stage"] == "merge")
    assert [r["name"] for r in merge["entries"]] == [f"merged/{p.id}" for p in plan_merges(cfg.merge)]
    assert "merged/pact+ties-rsvd" in [r["name"] for r in merge["entries"]]


def test_status_and_the_stages_share_one_plan(tmp_path):
    from pactmerge.pipeline import stages
    from pactmerge.pipeline.context import RunContext
    from pactmerge.pipeline.merge_plan import stage_entries

    run, cfg = _claimed(tmp_path, "comparisons.sequential=false", "comparisons.zero_shot=false")
    status = collect(run)
    shown = [(s["stage"], [r["name"] for r in s["entries"]]) for s in status["stages"][:-2]]
    planned = stage_entries(cfg, ["digits", "faces"])
    assert [names for _, names in shown] == [names for _, names in planned]
    assert [s for s, _ in shown] == ["prepare", "finetune", "joint", "merge"]
    evaluate = status["stages"][-2]
    assert evaluate["not_evaluated"] == [n for n, _ in stages.evaluation_plan(RunContext(cfg))]
    assert evaluate["not_evaluated"][:3] == ["finetuned/digits", "finetuned/faces", "joint"]


def _tiny_study_config(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("study_fixtures", Path(__file__).parents[1] / "study" / "conftest.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(fixtures.tiny_study_config(tmp_path, comparisons__sequential=False)))
    return path


@pytest.mark.slow
def test_real_tiny_study_status_and_redo_of_one_corrupt_entry(tmp_path, capsys):
    cfg = _tiny_study_config(tmp_path)
    run = tmp_path / "run"
    assert main(["run", str(cfg)]) == 0
    assert collect(run)["finished"], format_status(collect(run))
    before = CheckpointStore(run, create=False).manifest["entries"]
    damaged = run / "finetuned" / "faces.safetensors"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert collect(run)["corrupt"] == ["finetuned/faces"]
    assert main(["status", "--drop-corrupt", str(run)]) == 0
    assert main(["run", str(run / "config.yaml"), "--output-dir", str(run)]) == 0
    after = CheckpointStore(run, create=False).manifest["entries"]
    assert after["finetuned/faces"]["sha256"] == before["finetuned/faces"]["sha256"]  # the finished fit, re-stored
    unchanged = [n for n in before if n != "finetuned/faces"]
    assert all(after[n]["created"] == before[n]["created"] for n in unchanged)
    assert collect(run)["finished"]
