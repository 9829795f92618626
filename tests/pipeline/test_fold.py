"""Evaluation-time BatchNorm folding (pipeline.fold): same outputs, one convolution per pair, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pactmerge.pipeline.fold import FoldedEncoder, conv_bn_pairs, fold_state


class _BNAct(nn.BatchNorm2d):
    """A BatchNorm that applies its activation child, like timm's BatchNormAct2d."""

    def __init__(self, c: int) -> None:
        super().__init__(c, eps=1e-3)
        self.act = nn.ReLU6()

    def forward(self, x):
        return self.act(super().forward(x))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = _BNAct(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True)  # depthwise, with a bias
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self.head(x.mean((2, 3)))


class _Residual(_Net):
    """conv2's output is used past its BatchNorm too: folding would change the result."""

    def forward(self, x):
        y = self.conv2(self.bn1(self.conv1(x)))
        return self.head((self.bn2(y) + y).mean((2, 3)))


def _randomised(net: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.1)
    return net.eval()


def test_pairs_are_adjacent_conv_then_batchnorm_children():
    assert [(c, b) for c, b, _ in conv_bn_pairs(_Net())] == [("conv1", "bn1"), ("conv2", "bn2")]
    assert conv_bn_pairs(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))) == []


def test_fold_state_by_hand():
    # one channel: y = γ (w x - μ) / √(σ² + ε) + β  ->  w' = w γ/√(σ²+ε), b' = β - μ γ/√(σ²+ε)
    state = {"c.weight": torch.tensor([[[[2.0]]]]), "b.weight": torch.tensor([3.0]), "b.bias": torch.tensor([1.0]),
             "b.running_mean": torch.tensor([0.5]), "b.running_var": torch.tensor([4.0 - 0.25]),
             "b.num_batches_tracked": torch.tensor(7)}
    out = fold_state(state, [("c", "b", 0.25)])
    assert set(out) == {"c.weight", "c.bias"}
    assert out["c.weight"].item() == 2.0 * 3.0 / 2.0 and out["c.bias"].item() == 1.0 - 0.5 * 3.0 / 2.0


def test_folded_encoder_gives_the_same_outputs_for_any_state():
    net = _randomised(_Net())
    probe = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    folded = FoldedEncoder(net, probe)
    assert folded.folded and not any(isinstance(m, nn.BatchNorm2d) for m in folded.module.modules())
    # another state of the same encoder (a merge at another α): loaded folded, same function
    other = {k: (v * 1.3 if v.is_floating_point() and not k.endswith("running_var") else v)
             for k, v in net.state_dict().items()}
    folded.load(other)
    net.load_state_dict(other)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(folded.module(x), net(x), rtol=1e-5, atol=1e-5)
    assert net.bn1.training is False  # the original is left in the mode it had


def test_a_network_that_reuses_the_convolution_output_is_not_folded():
    net = _randomised(_Residual())
    folded = FoldedEncoder(net, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)))
    assert not folded.folded and folded.module is net
    state = net.state_dict()
    folded.load(state)  # unfolded: the plain state dict


def test_same_pad_convolution_equals_timms_conv2d_same():
    """Every padding route: symmetric (odd sizes), one more on the far side (the wider zero-led
    kernel; even sizes of a strided convolution, one side or both), and the buffer (dilation)."""
    from timm.layers.conv2d_same import Conv2dSame

    from pactmerge.pipeline.fold import FoldedConv2d

    gen = torch.Generator().manual_seed(3)
    cases = ((3, 2, (16, 16), 1, 1), (5, 2, (16, 16), 4, 1), (5, 2, (15, 15), 4, 1), (3, 1, (9, 9), 4, 1),
             (3, 2, (7, 7), 4, 1), (3, 2, (16, 15), 4, 1), (4, 2, (9, 9), 1, 1), (3, 1, (9, 10), 4, 2))
    for k, stride, (h, w), groups, dilation in cases:
        ref = Conv2dSame(4, 8, k, stride=stride, dilation=dilation, groups=groups, bias=True)
        ours = FoldedConv2d(4, 8, k, stride=stride, padding=0, dilation=dilation, groups=groups, bias=True, same=True)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(3, 4, h, w, generator=gen)
        for fmt in (torch.contiguous_format, torch.channels_last):
            xf = x.contiguous(memory_format=fmt)
            with torch.no_grad():
                got = ours(xf)
                torch.testing.assert_close(got, ref(xf), rtol=0, atol=1e-5)
            assert got.shape == (3, 8, -(-h // stride), -(-w // stride))


ONEDNN = torch.backends.mkldnn.is_available()


def _ops(fn) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("act", [nn.ReLU6(), nn.ReLU(), nn.SiLU(), nn.Hardtanh(-0.5, 0.5), nn.Identity(),
                                 nn.Sequential(nn.Identity(), nn.ReLU6()), nn.GELU()])
@pytest.mark.parametrize("same", [False, True])
def test_fused_convolution_equals_the_convolution_then_its_activation(act, same):
    """Without gradients on the CPU a folded convolution is one oneDNN call with its activation fused
    (no separate activation pass runs); its output equals ``F.conv2d`` then the activation (the
    path with gradients), in float32 and under bf16 autocast, in both memory formats."""
    from pactmerge.pipeline.fold import FoldedConv2d

    gen = torch.Generator().manual_seed(4)
    conv = FoldedConv2d(8, 8, 3, stride=2 if same else 1, padding=0 if same else 1, groups=4, bias=True,
                        same=same, act=act)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.bias.copy_(torch.randn(8, generator=gen))
    fusable = not isinstance(act, nn.GELU)
    assert (conv.post is not None) == fusable
    x = torch.randn(3, 8, 10, 10, generator=gen)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.contiguous(memory_format=fmt)
        for bf16 in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                want = conv(xf).detach()  # gradients on: F.conv2d, then act
                with torch.no_grad():
                    ops = _ops(lambda: conv(xf))
                    got = conv(xf)
            assert got.dtype == want.dtype == (torch.bfloat16 if bf16 else torch.float32)
            tol = 1e-2 if bf16 else 1e-5
            torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
            if fusable and ONEDNN:  # a torch without oneDNN runs the two passes
                assert "mkldnn::_convolution_pointwise" in ops
                assert not {"aten::hardtanh", "aten::clamp", "aten::relu", "aten::silu"} & ops, ops


def test_fused_convolution_follows_a_new_state_under_autocast():
    """The bf16 weight kept between fused calls is replaced when ``load`` writes a new state."""
    net = _randomised(_Net())
    folded = FoldedEncoder(net, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))

    def run(module):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return module(x).float()

    first = run(folded.module)
    other = {k: (v * -0.7 if v.is_floating_point() and not k.endswith("running_var") else v)
             for k, v in net.state_dict().items()}
    folded.load(other)
    fresh = FoldedEncoder(_randomised(_Net()), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)))
    fresh.load(other)
    torch.testing.assert_close(run(folded.module), run(fresh.module), rtol=0, atol=0)
    assert not torch.allclose(run(folded.module), first)


def test_unfused_folded_encoder_runs_the_activation_as_its_own_pass():
    """``FoldedEncoder(..., fuse=False)`` (the benchmark's comparison) runs the convolution and then the
    activation, and computes what the fused encoder computes."""
    net = _randomised(_Net())
    probe = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    fused, plain = FoldedEncoder(net, probe), FoldedEncoder(net, probe, fuse=False)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ops = _ops(lambda: plain.module(x))
        torch.testing.assert_close(plain.module(x), fused.module(x), rtol=1e-5, atol=1e-5)
    assert "mkldnn::_convolution_pointwise" not in ops and "aten::hardtanh" in ops, ops
    if ONEDNN:
        with torch.no_grad():
            assert "mkldnn::_convolution_pointwise" in _ops(lambda: fused.module(x))
