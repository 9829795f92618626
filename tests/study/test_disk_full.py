"""A study on a file system that fills up: a clear error, nothing half-written, and a rerun on
more room finishes with the table of a run that never ran short.

The file system is a real tmpfs mounted with a size limit (needs root, as on CI; skipped
elsewhere), so the ``No space left on device`` comes from the kernel, wherever it strikes.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from pactmerge.cli import main
from pactmerge.pipeline import study

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    """A directory on a 700 kB tmpfs: room for the pre-trained encoder and a fit or two of the
    tiny study (whose run directory ends at about 1.5 MB), not for the whole study."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_fails_clearly_and_a_rerun_with_room_finishes(tmp_path, small_disk, tiny_config, capsys):
    run = small_disk / "run"
    assert main(["run", str(tiny_config(output_dir=str(run)))]) == 2
    err = capsys.readouterr().err
    assert "pactmerge run: error: No space left on device" in err and "rerun to continue" in err, err[-2000:]
    log = (run / "log.txt").read_text()
    assert "whose file system has" in log and "it will stop when the disk is full" in log  # said up front

    # nothing half-written: every file is a finished one (no temporary files of atomic writes), and
    # every entry the manifest lists is whole (its sha256 checks)
    leftovers = [p for p in run.rglob("*") if p.is_file() and (".tmp" in p.name or p.name.startswith(".tmp"))]
    assert leftovers == []
    entries = json.loads((run / "manifest.json").read_text())["entries"]
    assert "pretrained" in entries and not any(n.startswith("merged/") for n in entries)
    assert main(["status", str(run)]) == 0
    assert "corrupt" not in capsys.readouterr().out

    # more room: the rerun continues from what was kept and gives the table of an unhindered run
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    assert main(["run", str(tiny_config(output_dir=str(run)))]) == 0
    reference = tmp_path / "roomy"
    assert main(["run", str(tiny_config(output_dir=str(reference)))]) == 0
    assert (run / "results.csv").read_text() == (reference / "results.csv").read_text()


def test_disk_need_counts_the_entries_left_and_one_fit(tiny_config):
    from pactmerge.pipeline.config import load_config

    cfg = load_config(tiny_config())
    ctx = study.open_study(cfg)
    from pactmerge.pipeline import stages

    stages.prepare(ctx)
    size = ctx.store.path("pretrained").stat().st_size
    # 2 fine-tunes + joint + sequential + 4 merges, and a fit's checkpoint and final state (4 more)
    assert study.disk_need(ctx) == size * (2 + 2 + 4 + 4)
    stages.finetune_individual(ctx, "digits")
    stages.finetune_individual(ctx, "faces")
    stages.finetune_joint(ctx)
    stages.finetune_sequential(ctx)
    assert study.disk_need(ctx) == size * 4  # the merges alone: no fit is left
