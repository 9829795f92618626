"""benchmarks/eval_offline.py: the flop count of a convolution, the per-kind roofline, the JSON line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import eval_offline  # noqa: E402


def test_conv_flops_by_hand():
    # 3x3, 4 -> 6 channels, output 2x6x5x5: 300 values x 4*9 multiply-adds x 2
    assert eval_offline.conv_flops(torch.nn.Conv2d(4, 6, 3), (2, 6, 5, 5)) == 2 * 300 * 36
    # depthwise 5x5 over 8 channels: one input channel per output value
    dw = torch.nn.Conv2d(8, 8, 5, groups=8)
    assert eval_offline.conv_kind(dw) == "depthwise"
    assert eval_offline.conv_flops(dw, (1, 8, 4, 4)) == 2 * 128 * 25
    assert eval_offline.conv_kind(torch.nn.Conv2d(8, 16, 1)) == "pointwise 1x1"
    assert eval_offline.conv_kind(torch.nn.Conv2d(8, 16, 3, groups=2)) == "grouped"


def test_roofline_counts_every_call_of_every_layer():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
                              torch.nn.Conv2d(8, 16, 1), torch.nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(2, 3, 6, 6)

    def run(module):
        with torch.no_grad():
            module(x)
            module(x)  # two calls a pass: both are counted

    kinds = {k["kind"]: k for k in eval_offline.conv_roofline(net, run, repeats=2)}
    assert {k: v["layers"] for k, v in kinds.items()} == {"full kxk": 1, "depthwise": 1, "pointwise 1x1": 2}
    values = 2 * 36  # output positions per channel, two images
    assert kinds["full kxk"]["gflop_per_pass"] * 1e9 == pytest.approx(2 * 2 * values * 8 * 27)
    assert kinds["pointwise 1x1"]["gflop_per_pass"] * 1e9 == pytest.approx(2 * 2 * values * (16 * 8 + 4 * 16))
    assert all(k["ms_per_pass"] > 0 for k in kinds.values())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net)  # hooks removed


def test_small_run_ends_with_its_json_line(capsys):
    assert eval_offline.main(["--images", "16", "--batch-size", "8", "--repeats", "1", "--peak-size", "64"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    record = json.loads(out[-1])
    assert [r["variant"] for r in record["rows"]] == ["unfolded", "folded", "folded+fused"]
    assert record["rows"][2]["max_abs_diff_vs_folded"] == 0
    kinds = {k["kind"]: k for k in record["roofline"]["kinds"]}
    # EfficientNet-Lite0: the stem, 16 depthwise convolutions, 32 pointwise ones (the head's included)
    assert {k: v["layers"] for k, v in kinds.items()} == {"full kxk": 1, "depthwise": 16, "pointwise 1x1": 32,
                                                         "all convolutions": 49}
    assert record["roofline"]["peak_gflop_per_s"] > 0
