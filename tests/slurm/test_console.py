"""A local run on a machine with SLURM's ``srun`` on the PATH: Lightning's hint that ``srun`` is not
used stays off the console and goes to the run's log.txt."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_helpers import write_study

pytestmark = pytest.mark.slow
HINT = "The `srun` command is available on your system but is not used"


def test_local_run_keeps_the_srun_hint_off_the_console(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if shutil.which("srun", path=env["PATH"]) is None:  # no SLURM here: an `srun` for Lightning to find
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / "srun").chmod(0o755)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    cfg = write_study(tmp_path / "study", recipe__max_steps=2, comparisons__joint=False,
                      comparisons__sequential=False, merge__methods=["task_arithmetic"], merge__pact=["none"])
    res = subprocess.run(["pactmerge", "run", str(cfg)], env=env, capture_output=True, text=True, cwd=tmp_path,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert HINT not in res.stdout + res.stderr
    assert HINT in (tmp_path / "study" / "run" / "log.txt").read_text()
