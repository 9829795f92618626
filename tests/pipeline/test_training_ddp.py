import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    """Two gloo processes train; validation accuracy is reduced over both shards; one .ckpt file."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "SLURM_JOB_ID"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "ddp_worker.py"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["world_size"] == 2
    assert res["summary"]["steps"] == 30
    # the logged accuracy is that of the whole validation set, not of rank 0's half
    logged = res["summary"]["metrics"]["val/acc"]
    assert logged == pytest.approx(res["full_val_acc"], abs=1e-6)
    assert logged == pytest.approx(sum(res["shard_val_acc"]) / 2, abs=1e-6)
    assert res["shard_val_acc"][0] != res["shard_val_acc"][1]  # so rank 0 alone would log another value
    assert res["ckpt_files"] == ["last.ckpt"]
