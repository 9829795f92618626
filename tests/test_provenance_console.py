"""Provenance records and the console's routing of log lines (fast, no study)."""

from __future__ import annotations

import io
import logging
import warnings

from pactmerge import console
from pactmerge.provenance import changed_fields, environment, footer, git_commit


def test_environment_records_versions_devices_threads():
    env = environment()
    assert env["packages"]["torch"] and env["packages"]["pytorch-lightning"]
    assert env["threads"]["torch_intra_op"] >= 1 and env["devices"]["cpu_cores"] >= 1
    assert env["python"].count(".") == 2


def test_git_commit_reads_a_checkout_without_git(tmp_path):
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text("a" * 40 + "\n")
    (tmp_path / "repo" / "src").mkdir()
    assert git_commit(tmp_path / "repo" / "src") == "a" * 40
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text("# pack-refs\n" + "b" * 40 + " refs/heads/main\n")
    assert git_commit(tmp_path / "repo" / "src") == "b" * 40


def test_changed_fields_names_dotted_differences():
    old = {"environment": {"packages": {"torch": "2.4"}, "threads": {"torch_intra_op": 2}}, "seed": 0}
    new = {"environment": {"packages": {"torch": "2.5"}, "threads": {"torch_intra_op": 2}}, "seed": 0, "x": 1}
    assert changed_fields(old, new) == ["environment.packages.torch", "x"]
    assert changed_fields(new, new) == []
    assert changed_fields(None, new) == ["provenance"]


def test_footer_is_one_line_with_versions_seed_and_hashes():
    prov = {"environment": environment(), "seed": 7, "pretrained_sha256": "f" * 64,
            "data_sha256": {"mnist": {"train": "1" * 64}}}
    line = footer(prov)
    assert "\n" not in line and "torch " in line and "seed 7" in line and "weights ffffffffffff" in line
    assert "(1 tasks)" in line


def test_console_shows_own_lines_and_warnings_not_library_chatter(tmp_path):
    stream = io.StringIO()
    try:
        console.configure(console.NORMAL, stream=stream)
        console.attach_run_log(tmp_path)
        logging.getLogger("pactmerge.test").info("stage merge finished")
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("GPU available: False, used: False")
        logging.getLogger().warning("No pretrained weights loaded for model 'x'. Model initialized randomly.")
        logging.getLogger("somelib").warning("a real third-party warning")
        warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated", DeprecationWarning,
                               "_pytree.py", 21, module="pytorch_lightning.utilities._pytree")
    finally:
        console.detach_run_logs()
        console.configure(console.NORMAL)
    shown = stream.getvalue()
    assert "stage merge finished" in shown and "a real third-party warning" in shown
    assert "GPU available" not in shown and "No pretrained weights" not in shown and "LeafSpec" not in shown
    logged = (tmp_path / "log.txt").read_text()
    assert "GPU available" in logged and "No pretrained weights" in logged and "stage merge finished" in logged


def test_quiet_and_verbose_levels():
    stream = io.StringIO()
    console.configure(console.QUIET, stream=stream)
    logging.getLogger("pactmerge.test").info("progress line")
    logging.getLogger("pactmerge.test").warning("own warning")
    console.configure(console.VERBOSE, stream=stream)
    logging.getLogger("pactmerge.test").debug("debug line")
    console.configure(console.NORMAL)
    shown = stream.getvalue()
    assert "progress line" not in shown and "own warning" in shown and "debug line" in shown
