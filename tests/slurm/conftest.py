"""A real two-node SLURM cluster on this machine for the ``slurm`` tests (scripts/slurm_test_cluster.sh).

The cluster needs root (slurmctld and slurmd run as root; the script installs the Debian
packages with apt-get when they are missing). Elsewhere every ``slurm`` test is skipped with the
reason. Jobs get this interpreter's ``bin`` first on the PATH and one thread per process, so a
job computes what a local run with the same environment computes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm_test_cluster.sh"
DONE_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
               "DEADLINE", "PREEMPTED")


def why_no_cluster() -> str | None:
    if not sys.platform.startswith("linux"):
        return "the SLURM test cluster runs on Linux only"
    if os.geteuid() != 0:
        return "the SLURM test cluster needs root (slurmctld and slurmd run as root)"
    have = all(shutil.which(b) or shutil.which(b, path="/usr/sbin") for b in ("slurmctld", "slurmd", "sbatch"))
    if not have and not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it"
    return None


def _free_port_base() -> int:
    for base in range(16817, 40000, 7):
        ok = True
        for port in range(base, base + 3):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no three free consecutive ports for the SLURM test cluster")


class Cluster:
    """The running test cluster: ``env`` for its client commands and jobs, and small helpers."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.dir, self.env = directory, env
        self.watch: list[Path] = []  # directories whose job logs go into failure messages

    def run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, **kw)

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` fields of one job (array elements as ``<array>_<index>``)."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False).stdout
        fields: dict[str, str] = {}
        for token in out.split():
            k, sep, v = token.partition("=")
            if sep and k not in fields:
                fields[k] = v
        return fields

    def state(self, job_id: str) -> str:
        return self.job(job_id).get("JobState", "UNKNOWN")

    def wait(self, job_ids, timeout: float = 240.0, states=DONE_STATES) -> dict[str, str]:
        """Wait until every job is in one of ``states``; returns id -> state."""
        deadline = time.monotonic() + timeout
        while True:
            now = {j: self.state(j) for j in job_ids}
            if all(s in states for s in now.values()):
                return now
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs not done after {timeout:.0f} s: {now}\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        """The tails of the job logs (under ``self.watch``) and of the daemons' logs, for failure messages."""
        parts = []
        outs = [f for d in self.watch for f in sorted(Path(d).rglob("*.out"))]
        for f in outs + sorted((self.dir / "log").glob("*.log")):
            parts.append(f"== {f}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    why = why_no_cluster()
    if why:
        pytest.skip(why)
    directory = tmp_path_factory.mktemp("slurm")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(PACTMERGE_SLURM_PORT=str(_free_port_base()), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", ""), "/usr/sbin"]))
    up = subprocess.run(["bash", str(SCRIPT), "up", str(directory)], env=env, capture_output=True, text=True)
    if up.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "down", str(directory)], env=env, capture_output=True)
        pytest.fail(f"the SLURM test cluster did not start:\n{up.stdout}\n{up.stderr}")
    env["SLURM_CONF"] = str(directory / "slurm.conf")
    cluster = Cluster(directory, env)
    try:
        yield cluster
    finally:
        subprocess.run(["bash", str(SCRIPT), "down", str(directory)], env=env, capture_output=True)
