"""Hostile or mistaken input to the commands: a named error, exit code 2, no traceback, nothing lost.

Each case is run through ``pactmerge.cli.main`` as a user would type it; the run directories
are real (a tiny open_clip ViT on the offline tasks), so the refusals come from the code paths a
study takes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import file_sha256

from pactmerge.cli import main
from pactmerge.fileio import save_safetensors_atomic


def _fails(capsys, *argv) -> str:
    """Run ``pactmerge ARGV``; check it exits 2 with a one-line error and no traceback; return stderr."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and f"pactmerge {argv[0]}: error: " in err
    return err


def _tiny_config(tmp_path: Path, **overrides) -> Path:
    spec = importlib.util.spec_from_file_location("study_fixtures", Path(__file__).parents[1] / "study" / "conftest.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(fixtures.tiny_study_config(tmp_path, **overrides)))
    return path


class _Marker:
    """Pickles to a call that creates a file: proof that an unpickler executed it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mknod, (str(self.path),))


# -- config and arguments ---------------------------------------------------------------------------
def test_weights_file_given_as_the_merge_config(tmp_path, capsys, monkeypatch):
    weights = tmp_path / "pre.safetensors"
    save_safetensors_atomic(weights, {"w": torch.randn(64, 64)})
    monkeypatch.chdir(tmp_path)
    err = _fails(capsys, "merge", weights)
    assert f"{weights}: not a study config" in err and "--pretrained" in err and "--finetuned" in err
    binary = tmp_path / "weights.yaml"  # a binary file under a config's name
    binary.write_bytes(weights.read_bytes())
    assert "not a study config" in _fails(capsys, "merge", binary)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre.safetensors", "weights.yaml"]


def test_config_file_that_is_not_text(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_bytes(b"output_dir: run\nseed: \xff\xfe\x00\x01\n")
    for command in ("run", "finetune", "evaluate"):
        extra = ["--all"] if command == "finetune" else []
        err = _fails(capsys, command, config, *extra)
        assert f"{config}: not a YAML config: it is not UTF-8 text" in err
    assert not (tmp_path / "run").exists()


def test_python_tag_in_set_is_refused_like_in_the_file(tmp_path, capsys):
    marker = tmp_path / "executed"
    value = f"!!python/object/apply:os.mknod ['{marker}']"
    err_set = _fails(capsys, "run", "--dry-run", "--output-dir", tmp_path / "run", "--set", f"seed={value}")
    assert f"--set seed={value}: the value of seed is not valid YAML" in err_set
    config = tmp_path / "study.yaml"
    config.write_text(f"seed: {value}\n")
    err_file = _fails(capsys, "run", "--dry-run", config)
    assert f"{config}: not valid YAML" in err_file
    reason = "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.mknod'"
    assert reason in err_set and reason in err_file
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_set_value_that_is_not_yaml_names_the_argument_and_key(tmp_path, capsys):
    err = _fails(capsys, "run", "--dry-run", "--output-dir", tmp_path / "run", "--set", "recipe.lr=[1e-3, 2")
    assert "--set recipe.lr=[1e-3, 2: the value of recipe.lr is not valid YAML" in err
    assert not (tmp_path / "run").exists()


# -- a run directory that was tampered with ------------------------------------------------------------
def _stored_study(tmp_path):
    """A claimed tiny study (digits, faces; no joint or sequential) whose fine-tunes are stored as small,
    deterministic edits of the pre-trained encoder, without training."""
    from pactmerge import console
    from pactmerge.pipeline import stages
    from pactmerge.pipeline.config import load_config
    from pactmerge.pipeline.study import open_study

    console.configure()  # this test's stderr (an earlier test's command left its own, now closed)
    config = _tiny_config(tmp_path, comparisons__joint=False, comparisons__sequential=False)
    ctx = open_study(load_config(config), config_text=config.read_text())
    stages.prepare(ctx)
    pre = ctx.store.load_state("pretrained")
    g = torch.Generator().manual_seed(0)
    for t in ctx.task_keys:
        ctx.store.save_state(f"finetuned/{t}", {k: v + 1e-3 * torch.randn(v.shape, generator=g) if
                                                 v.is_floating_point() else v for k, v in pre.items()},
                             {"kind": "finetuned", "task": t})
    return config, ctx


def test_corrupt_fine_tune_is_named_with_commands_that_repair_it(tmp_path, capsys):
    from pactmerge.checkpoints import CheckpointStore

    config, ctx = _stored_study(tmp_path)
    run = ctx.run_dir
    damaged = run / "finetuned" / "digits.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-5] ^= 0x01
    damaged.write_bytes(bytes(data))
    before = {n: e["sha256"] for n, e in CheckpointStore(run, create=False).manifest["entries"].items()}

    for argv in (["run", config], ["evaluate", config], ["finetune", config, "--task", "digits"]):
        err = _fails(capsys, *argv)
        assert f"{damaged}: sha256 mismatch" in err and "(finetuned/digits)" in err
        assert f"`pactmerge status --drop-corrupt {run}`" in err
        assert f"`pactmerge run {run / 'config.yaml'} --output-dir {run}`" in err
    entries = CheckpointStore(run, create=False).manifest["entries"]
    assert {n: e["sha256"] for n, e in entries.items()} == before  # nothing dropped, nothing rewritten
    assert not any(n.startswith("merged/") for n in entries)

    # the advice works: the entry is set aside, and the fine-tune stage no longer finds it done
    assert main(["status", "--drop-corrupt", str(run)]) == 0
    assert "dropped finetuned/digits (corrupt)" in capsys.readouterr().out
    kept = next((run / "corrupt").rglob("digits.safetensors"))
    assert hashlib.sha256(bytes(data)).hexdigest() == file_sha256(kept)  # kept, not deleted
    from pactmerge.commands.status import collect

    status = collect(run)
    assert not status["corrupt"]
    assert {r["name"]: r["state"] for s in status["stages"] for r in s["entries"]}["finetuned/digits"] == "to do"
    after = CheckpointStore(run, create=False)
    assert not after.has("finetuned/digits") and after.entry("finetuned/faces")["sha256"] == before["finetuned/faces"]


@pytest.mark.slow
def test_planted_pickle_checkpoint_is_named_and_never_executed(tmp_path, capsys):
    config = _tiny_config(tmp_path, tasks__names=["digits"], comparisons__joint=False, comparisons__sequential=False)
    fit_dir = tmp_path / "run" / "lightning" / "finetuned" / "digits"
    fit_dir.mkdir(parents=True)
    marker = tmp_path / "executed"
    planted = fit_dir / "last.ckpt"
    planted.write_bytes(pickle.dumps({"state_dict": _Marker(marker), "global_step": 3}))
    err = _fails(capsys, "finetune", config, "--task", "digits")
    assert f"{planted}: not a checkpoint this run wrote" in err
    assert f"`rm {planted}`" in err and f"delete {fit_dir}" in err
    assert not marker.exists() and planted.is_file()  # not executed, not deleted
    assert json.loads((tmp_path / "run" / "run.json").read_text())["tasks"] == ["digits"]
