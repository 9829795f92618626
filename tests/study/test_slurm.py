"""``pactmerge slurm``: the scripts parse, and submit.sh chains the merge job after every fine-tune."""

import os
import subprocess
from pathlib import Path


from pactmerge.cli import main


def _fake_sbatch(bin_dir: Path, log: Path) -> None:
    bin_dir.mkdir()
    script = bin_dir / "sbatch"
    # prints a new job id per call and records its arguments
    script.write_text(
        "#!/bin/bash\n"
        f'n=$(( $(wc -l < "{log}" 2>/dev/null || echo 0) + 101 ))\n'
        f'echo "$n $*" >> "{log}"\n'
        'echo "$n;cluster"\n'
    )
    script.chmod(0o755)


def test_scripts_parse_and_chain_dependencies(tmp_path, tiny_config, capsys):
    cfg = tiny_config(cluster={"devices": 2, "num_nodes": 2, "partition": "gpu", "setup": ["source venv/bin/activate"]})
    out = tmp_path / "slurm"
    assert main(["slurm", str(cfg), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"finetune_array.sbatch", "joint.sbatch", "sequential.sbatch", "merge_evaluate.sbatch", "submit.sh"} <= names
    for p in out.glob("*.sbatch"):
        subprocess.run(["bash", "-n", str(p)], check=True)
    subprocess.run(["bash", "-n", str(out / "submit.sh")], check=True)

    array = (out / "finetune_array.sbatch").read_text()
    assert "#SBATCH --array=0-1" in array  # two tasks
    assert "#SBATCH --nodes=2" in array and "#SBATCH --ntasks-per-node=2" in array and "--gres=gpu:2" in array
    assert "#SBATCH --partition=gpu" in array and "source venv/bin/activate" in array
    assert "srun pactmerge finetune" in array and 'TASKS=(digits faces)' in array

    log = tmp_path / "sbatch.log"
    _fake_sbatch(tmp_path / "bin", log)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    subprocess.run(["bash", str(out / "submit.sh")], check=True, env=env, capture_output=True)
    calls = log.read_text().splitlines()
    assert [c.split()[-1] for c in calls] == ["finetune_array.sbatch", "joint.sbatch", "sequential.sbatch",
                                              "merge_evaluate.sbatch"]
    assert "--dependency=afterok:101:102:103" in calls[-1]


def test_array_task_runs_the_task_of_its_index(tmp_path, tiny_config):
    cfg = tiny_config()
    out = tmp_path / "slurm"
    assert main(["slurm", str(cfg), "--out", str(out)]) == 0
    body = (out / "finetune_array.sbatch").read_text().replace("srun pactmerge finetune", "echo")
    script = tmp_path / "array.sh"
    script.write_text(body)
    for idx, task in enumerate(["digits", "faces"]):
        res = subprocess.run(["bash", str(script)], env=dict(os.environ, SLURM_ARRAY_TASK_ID=str(idx)),
                             capture_output=True, text=True, check=True)
        assert res.stdout.strip().endswith(f"--task {task}")


def test_lightning_picks_up_a_simulated_slurm_environment(monkeypatch):
    import pytorch_lightning as pl
    from lightning_fabric.plugins.environments import SLURMEnvironment

    for key, value in {
        # process 3 of 4: second node, second local device (as srun would start it)
        "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "pactmerge-finetune",
        "SLURM_NODELIST": "node[001-002]", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
    }.items():
        monkeypatch.setenv(key, value)
    # the Trainer records rank 3 in Lightning's process-wide rank_zero_only.rank, which would keep
    # every later Trainer in this process from logging or checkpointing: restored when the test ends
    from lightning_utilities.core.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    trainer = pl.Trainer(accelerator="cpu", devices=2, num_nodes=2, strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment)
    assert env.main_address == "node001"
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size()) == (3, 1, 1, 4)
    assert trainer.global_rank == 3 and trainer.world_size == 4


def test_a_pool_config_submits_only_the_merge_job(tmp_path, tiny_config, capsys):
    """A pool imports its checkpoints in the merge job (`pactmerge run`): no fine-tune array, no joint or
    sequential job, no dependency; scripts of an earlier non-pool write are removed."""
    import yaml

    cfg = tiny_config()
    out = tmp_path / "slurm"
    assert main(["slurm", str(cfg), "--out", str(out)]) == 0
    assert (out / "finetune_array.sbatch").exists()
    data = yaml.safe_load(cfg.read_text())
    data["pool"] = {"pretrained": str(tmp_path / "zeroshot.pt"), "legacy_pickle": True,
                    "finetuned": {t: str(tmp_path / f"{t}.pt") for t in ("digits", "faces")}}
    cfg.write_text(yaml.safe_dump(data))
    assert main(["slurm", str(cfg), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir() if p.is_file()} == {"merge_evaluate.sbatch", "submit.sh"}
    assert f"pactmerge run {cfg.resolve()}" in (out / "merge_evaluate.sbatch").read_text()
    log = tmp_path / "sbatch.log"
    _fake_sbatch(tmp_path / "bin", log)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    subprocess.run(["bash", str(out / "submit.sh")], check=True, env=env, capture_output=True)
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and calls[0].endswith(" merge_evaluate.sbatch") and "--dependency" not in calls[0]
