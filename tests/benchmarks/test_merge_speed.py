"""benchmarks/merge_speed.py: its sizes, its tables and JSON line, and the fusion_bench peer column.

The runs here use the ``tiny`` layout (width 32, two residual blocks), so each takes seconds.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import merge_speed  # noqa: E402

TINY_ARGS = ["--models", "tiny", "--tasks", "2", "--blocks", "1", "--baseline-blocks", "1", "--stream-model", "tiny",
             "--stream-tasks", "2", "--peer-model", "tiny", "--peer-tasks", "2", "--peer-blocks", "1"]


def _no_site_python(tmp_path: Path) -> str:
    """An interpreter that sees no site-packages (so certainly no fusion_bench)."""
    wrapper = tmp_path / "bare-python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return str(wrapper)


def _last_json(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    return json.loads(lines[-1])


def test_default_is_a_bounded_size_and_full_is_the_whole_sweep():
    default = merge_speed.parse_args([])
    assert default.preset == "default"
    assert (default.models, default.tasks, default.blocks) == (["ViT-B-32"], [8], 1)
    assert default.methods == merge_speed.DEFAULT_METHODS
    assert (default.baseline_blocks, default.stream_tasks, default.peer_blocks) == (1, 8, 1)

    full = merge_speed.parse_args(["--full"])
    assert (full.models, full.tasks, full.blocks, full.baseline_blocks, full.stream_tasks) == (
        ["ViT-B-32", "ViT-L-14"], [8, 20], -1, -1, 20)
    assert full.methods is None  # every registered method, filled in by main()

    quick = merge_speed.parse_args(["--quick"])
    assert quick.blocks == 1 and quick.tasks == [4] and quick.stream_tasks == 4


def test_an_explicit_size_overrides_the_preset():
    args = merge_speed.parse_args(["--full", "--blocks", "3", "--tasks", "5", "--stream-tasks", "2"])
    assert (args.blocks, args.tasks, args.stream_tasks, args.models) == (3, [5], 2, ["ViT-B-32", "ViT-L-14"])


def test_quick_and_full_exclude_each_other():
    with pytest.raises(SystemExit):
        merge_speed.parse_args(["--quick", "--full"])


def test_first_blocks_keeps_the_stem_and_the_first_blocks():
    layout = merge_speed.vit_layout("tiny")
    one = merge_speed.first_blocks(layout, 1)
    assert any(".resblocks.0." in k for k in one) and not any(".resblocks.1." in k for k in one)
    assert "visual.proj" in one and "visual.conv1.weight" in one
    assert merge_speed.first_blocks(layout, -1) == layout


def test_tiny_run_prints_every_table_and_a_json_last_line(tmp_path, capsys):
    argv = [*TINY_ARGS, "--methods", "tsvm", "--stream-dir", str(tmp_path),
            "--peer-python", _no_site_python(tmp_path)]

    assert merge_speed.main(argv) == 0

    out = capsys.readouterr().out
    summary = _last_json(out)
    assert summary["benchmark"] == "merge_speed" and summary["blocks"] == 1
    assert set(summary["results"]) == {"tiny/T2/tsvm/exact/cpu", "tiny/T2/tsvm/randomized/cpu"}
    assert all(r["seconds"] > 0 for r in summary["results"].values())
    assert summary["baseline"][0]["rel_err"] < 1e-4  # the library's exact TSV-M equals the loop of full SVDs
    assert summary["streaming"]["status"] == "ok" and summary["streaming"]["T"] == 2
    stream = summary["streaming"]
    assert 0 < stream["torch_import_mib"] < stream["max_rss_mib"]  # torch's own baseline, reported apart
    assert stream["ratio_above_torch"] < stream["ratio_max_rss"]
    # the peer column is skipped, with a note saying how to get it
    assert summary["peer"]["status"] == "skipped"
    assert "fusion_bench" in summary["peer"]["note"] and "--peer-python" in summary["peer"]["note"]
    for heading in ("seconds and peak memory", "loop of full SVDs", "streaming merge_files", "peer: whole-process"):
        assert heading in out
    assert "note: fusion_bench is not importable" in out
    assert list(tmp_path.iterdir()) == [tmp_path / "bare-python"], "temporary checkpoints were left behind"


STAND_IN = '''
"""Stand-in for fusion_bench's TSV-M with its semantics: r = int(min(m, n) / T) per task, full SVDs,
whitening by the SVDs of the concatenated bases; means elsewhere."""
import torch


def compute_and_sum_svd_mem_reduction(task_vectors, exclude_keys=None, accelerator="cpu"):
    T, out = len(task_vectors), {}
    for key in task_vectors[0]:
        vecs = [tv[key] for tv in task_vectors]
        if vecs[0].ndim != 2 or key in (exclude_keys or []):
            out[key] = sum(vecs) / T
            continue
        us, ss, vhs = [], [], []
        for v in vecs:
            u, s, vh = torch.linalg.svd(v, full_matrices=False)
            r = int(s.shape[0] / T)
            us.append(u[:, :r]), ss.append(s[:r]), vhs.append(vh[:r])
        u, s, vh = torch.cat(us, 1), torch.cat(ss), torch.cat(vhs, 0)
        uu, _, vu = torch.linalg.svd(u, full_matrices=False)
        uv, _, vv = torch.linalg.svd(vh, full_matrices=False)
        out[key] = torch.linalg.multi_dot((uu, vu, torch.diag(s), uv, vv))
    return out
'''


@pytest.mark.slow
def test_peer_column_with_a_stand_in_fusion_bench(tmp_path, monkeypatch, capsys):
    """The peer path end to end (two whole processes, same files), against a stand-in module at
    fusion_bench's import path: the ratio is formed and the two merges agree."""
    pkg = tmp_path / "site" / "fusion_bench" / "method" / "task_singular_vector" / "utils"
    pkg.mkdir(parents=True)
    for d in [pkg, *pkg.parents][:5]:
        (d / "__init__.py").touch()
    (pkg / "TSVM_utils.py").write_text(textwrap.dedent(STAND_IN))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))

    argv = [*TINY_ARGS, "--no-speed", "--no-baseline", "--no-stream", "--stream-dir", str(tmp_path)]
    assert merge_speed.main(argv) == 0

    peer = _last_json(capsys.readouterr().out)["peer"]
    assert peer["status"] == "ok", peer
    assert peer["ratio"] == pytest.approx(peer["fusion_bench_s"] / peer["pactmerge_s"])
    assert peer["merge_ratio"] > 0
    assert peer["rel_err"] < 1e-4


def test_peer_script_exits_3_when_fusion_bench_is_missing(tmp_path):
    import subprocess

    spec = json.dumps({"pretrained": "x", "finetuned": [], "out": str(tmp_path / "o")})
    proc = subprocess.run([sys.executable, str(BENCH / "_peer_fusion_bench.py"), spec], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ""})
    if proc.returncode == 0 or "fusion_bench cannot be imported" not in proc.stderr:
        pytest.skip("fusion_bench is installed in this interpreter")
    assert proc.returncode == 3


def test_synthetic_fine_tunes_have_the_study_spectrum_shape():
    """Task vectors decay like the offline study's (s_i / s_1 ~ i^-0.55 at the top), down to a noise floor."""
    import torch

    pre = {"w": torch.zeros(512, 256), "b": torch.zeros(256)}
    tau = merge_speed.synth_finetuned(pre, 0, 0, 0, torch.float32)["w"].double()
    s = torch.linalg.svdvals(tau)
    i = torch.arange(1, 17, dtype=torch.float64)
    x, y = i.log(), (s[:16] / s[0]).log()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    assert -0.7 < slope < -0.4, slope
    assert float(s[-1] / s[0]) > 1e-3  # full rank: noise below the low-rank part, not an exact zero tail
    assert float(s[64] / s[0]) < 0.15  # decayed well below the top by a quarter of min(m, n)
