"""The job record of a SLURM run and the parsing of `scontrol show job -o` (no cluster needed)."""

from __future__ import annotations

from pactmerge.pipeline.slurm_jobs import _parse_scontrol, format_slurm, read_record, slurm_status

# one array element as `scontrol show job -o` prints it (Slurm 22.05; shortened) and the pending
# remainder of an array, which is one line for all its elements
FAILED_ELEMENT = ("JobId=10 ArrayJobId=9 ArrayTaskId=0 JobName=pactmerge-finetune UserId=root(0) JobState=FAILED "
                  "Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 ExitCode=2:0 "
                  "NodeList=n1 Command=/tmp/x/finetune_array.sbatch WorkDir=/tmp/x")
PENDING_ARRAY = ("JobId=9 ArrayJobId=9 ArrayTaskId=1-3%2 JobName=pactmerge-finetune JobState=PENDING "
                 "Reason=JobArrayTaskLimit Restarts=0 ExitCode=0:0")


def test_scontrol_lines_by_job_and_array_element():
    jobs = _parse_scontrol("\n".join([FAILED_ELEMENT, PENDING_ARRAY]))
    assert jobs["9_0"]["JobState"] == "FAILED" and jobs["10"] is jobs["9_0"]
    assert [jobs[f"9_{i}"]["JobState"] for i in (1, 2, 3)] == ["PENDING"] * 3
    assert "9_4" not in jobs and jobs["9_0"]["ExitCode"] == "2:0"


def test_record_latest_submission_wins_and_status_without_a_scheduler(tmp_path, monkeypatch):
    record = tmp_path / "run" / "slurm" / "jobs.tsv"
    record.parent.mkdir(parents=True)
    record.write_text("\n".join([
        "1\t#config\t/abs/study.yaml", "1\t#scripts\t/abs/run/slurm",
        "1\tfinetuned/a\t5_0", "1\tfinetuned/b\t5_1", "1\tmerge\t6",
        "2\t#config\t/abs/study.yaml", "2\t#scripts\t/abs/run/slurm", "2\tfinetuned/b\t7_0", "2\tmerge\t8",
    ]) + "\n")
    rec = read_record(tmp_path / "run")
    assert rec["jobs"] == {"finetuned/a": "5_0", "finetuned/b": "7_0", "merge": "8"}
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # neither scontrol nor sacct
    status = slurm_status(tmp_path / "run", stored={"finetuned/a"})
    assert [r["state"] for r in status["jobs"]] == ["UNKNOWN"] * 3 and status["failed"] == []
    assert status["resubmit"] == "pactmerge slurm /abs/study.yaml --missing --submit --out /abs/run/slurm"
    text = "\n".join(format_slurm(status))
    assert "finetuned/b                  job 7_0" in text and "UNKNOWN" in text
