"""Without SLURM: the joint fine-tune on two "nodes" of this machine under torchrun (rendezvous on
127.0.0.1), one process each, DDP over gloo on the CPU."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from slurm_helpers import manifest, write_study

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_joint_fine_tune_on_two_torchrun_nodes(tmp_path):
    cfg = write_study(tmp_path / "study", recipe__batch_size=8, comparisons__joint_steps=8,
                      cluster__num_nodes=2, cluster__devices=1, cluster__strategy="ddp")
    run = tmp_path / "study" / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                                     "MASTER_", "TORCHELASTIC"))}
    env["OMP_NUM_THREADS"] = "1"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                               f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
                               "-m", "pactmerge", "finetune", str(cfg), "--joint"],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for node in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    ranks = {m for out in outs for m in re.findall(r"DDP rank (\d) of 2 \(node (\d)\)", out)}
    assert ranks == {("0", "0"), ("1", "1")}, outs
    entry = manifest(run)["joint"]
    assert entry["steps"] == 8 and (run / entry["file"]).is_file()
    # the stored entry is the result: no checkpoint of the fit is left (no SLURM hpc_ckpt either)
    fit = run / "lightning" / "joint"
    assert not [*fit.rglob("*.ckpt"), *fit.rglob("final.safetensors")] and (fit / "final.json").is_file()
