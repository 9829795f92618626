"""The legacy reader serves every command that loads an encoder from files: merge (file mode) and
analyze read task_vectors pickles with --legacy-pickle, and without it say to pass it."""

from __future__ import annotations

import json

import torch

from pool_builders import task_vectors_pickles


def test_merge_file_mode_reads_legacy_pickles(tmp_path, capsys):
    from pactmerge.cli import main
    from pactmerge.fileio import load_state_dict

    towers = task_vectors_pickles(tmp_path / "tv")
    args = ["merge", "--pretrained", str(tmp_path / "tv" / "zeroshot.pt"), "--finetuned",
            str(tmp_path / "tv" / "Digits" / "finetuned.pt"), str(tmp_path / "tv" / "Faces" / "finetuned.pt"),
            "--method", "task_arithmetic", "--alpha", "0.5", "--out", str(tmp_path / "m.safetensors")]
    assert main(args) == 2
    assert "--legacy-pickle" in capsys.readouterr().err and not (tmp_path / "m.safetensors").exists()
    assert main([*args, "--legacy-pickle"]) == 0, capsys.readouterr().err
    merged = load_state_dict(tmp_path / "m.safetensors")
    pre, a, b = (towers[f] for f in ("zeroshot.pt", "Digits/finetuned.pt", "Faces/finetuned.pt"))
    for k in pre:
        want = pre[k] + 0.5 * ((a[k] - pre[k]) + (b[k] - pre[k]))
        assert torch.allclose(merged[f"visual.{k}"], want, atol=1e-6), k


def test_analyze_reads_legacy_pickles(tmp_path, capsys):
    from pactmerge.cli import main

    task_vectors_pickles(tmp_path / "tv")
    out = tmp_path / "lbw"
    assert main(["analyze", "--legacy-pickle", "--pretrained", str(tmp_path / "tv" / "zeroshot.pt"),
                 "--finetuned", f"digits={tmp_path / 'tv' / 'Digits' / 'finetuned.pt'}",
                 f"faces={tmp_path / 'tv' / 'Faces' / 'finetuned.pt'}", "--K", "2", "--k", "2", "--no-pact",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    report = json.loads((out / "lbw.json").read_text())
    assert set(report["tasks"]) == {"digits", "faces"}
