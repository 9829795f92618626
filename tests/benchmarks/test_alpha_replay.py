"""benchmarks/alpha_replay.py: a search replayed on hand-made prediction grids, its gaps and image counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import alpha_replay  # noqa: E402


def _grid(path: Path, peak: float, n: int = 200) -> None:
    """One task of ``n`` examples whose accuracy rises linearly to 1 at ``peak`` and falls after it."""
    alphas = np.round(np.arange(0, 61) * 0.05, 6)
    labels = np.zeros(n, dtype=np.int16)
    preds = np.ones((len(alphas), n), dtype=np.int16)
    for i, a in enumerate(alphas):
        correct = int(round(n * max(0.0, 1 - abs(a - peak) / 3)))
        preds[i, :correct] = 0
    np.savez_compressed(path, alphas=alphas, grid=np.array([0.0, 0.5, 1.0]), bounds=np.array([0.0, 3.0]),
                        pred__t=preds, label__t=labels)


def test_replay_widens_to_the_peak_and_counts_images(tmp_path):
    _grid(tmp_path / "m.npz", peak=1.6)
    search = alpha_replay.load_search(None)
    whole = alpha_replay.replay(tmp_path / "m.npz", search, subset=500, seed=0)  # no first pass: the split is small
    assert whole["chosen"] == 1.6 and whole["gap"] == 0.0 and whole["gap_hard"] == 0.0
    assert whole["range"][1] >= 1.6 and whole["images"] == 200 * whole["evaluations"]
    sub = alpha_replay.replay(tmp_path / "m.npz", search, subset=50, seed=0)
    # a first pass on 50 examples; a whole-split score of an α it saw costs only the other 150
    assert sub["chosen"] == 1.6 and sub["gap"] == 0.0
    assert sub["images"] % 50 == 0 and sub["images"] < 200 * sub["evaluations"]


def test_main_prints_a_row_per_merge_and_a_json_line(tmp_path, capsys):
    grids = tmp_path / "grids"
    grids.mkdir()
    _grid(grids / "a.npz", peak=0.4)
    _grid(grids / "b.npz", peak=2.2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"config": {"seed": 3}}))
    assert alpha_replay.main([str(run), "--out", str(grids), "--subset", "40"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["merges"] == 2 and summary["over_tolerance"] == 0 and summary["subset_per_task"] == 40
    assert any(line.startswith("a ") for line in out) and any(line.startswith("b ") for line in out)
    assert alpha_replay.main([str(run), "--out", str(tmp_path / "nothing")]) == 2
