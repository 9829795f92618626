"""Evaluation-time BatchNorm folding: an encoder whose eval-mode BatchNorms are folded into convolutions.

In evaluation a BatchNorm that follows a convolution is an affine map per channel, so it can be
folded into that convolution: ``W' = W · γ/√(σ² + ε)`` and ``b' = β − μ · γ/√(σ² + ε)`` (plus the
convolution's own bias, scaled). ``FoldedEncoder(encoder, probe)`` builds, once, a copy of
``encoder`` in which every such pair is one convolution with a bias and the BatchNorm is replaced
by what it applied after normalising (timm's ``BatchNormAct2d`` keeps its activation and dropout),
and timm's ``Conv2dSame`` layers pad into a buffer (``SamePadConv2d``) instead of through ``F.pad``;
``load(state)`` folds a state dict of the original encoder into it. One convolution pass instead of
a convolution, a normalisation and an activation: about 1.5x faster evaluation of the offline
default's EfficientNet on the CPU.

Pairs are found structurally (a ``Conv2d`` child immediately followed by a ``BatchNorm2d`` child of
the same parent, the order in which torchvision and timm define their blocks). That is only a
guess at the data flow, so the folded copy is checked once against the original encoder on the
``probe`` input, in float32; when the outputs differ (a network that uses the convolution's
output elsewhere too), nothing is folded and ``folded`` is False. An encoder with no such pair (a
ViT) is used as it is.

The folded weights are computed in float32 from the stored state, so a folded evaluation differs
from an unfolded one by float32 rounding only (docs/reproducibility.md).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

PROBE_TOLERANCE = 1e-3  # largest |folded - original| accepted, relative to the output's largest magnitude


Pair = tuple[str, str, float]  # (convolution name, BatchNorm name, the BatchNorm's eps)


def conv_bn_pairs(encoder: nn.Module) -> list[Pair]:
    """(convolution, BatchNorm, eps) of every Conv2d directly followed by a BatchNorm2d sibling that
    keeps running statistics."""
    pairs = []
    for parent_name, parent in encoder.named_modules():
        kids = list(parent.named_children())
        for (a_name, a), (b_name, b) in zip(kids, kids[1:]):
            if (isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.track_running_stats
                    and b.running_var is not None and b.affine and b.num_features == a.out_channels):
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + a_name, prefix + b_name, float(b.eps)))
    return pairs


class SamePadConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding (timm's ``Conv2dSame``) that never copies its
    input. SAME pads ``P // 2`` before and ``P - P // 2`` after; when those are equal the
    convolution's own symmetric padding does it, and when the far side needs one more (a strided
    convolution of an even size, as in EfficientNet), a kernel one larger with a leading row and
    column of zeros, padded by the far side's amount on both sides, reads exactly the same
    windows: output ``i`` sees inputs ``s·i - top ... s·i - top + k - 1`` either way, and the extra
    tap multiplies zero. Other cases (dilation, uneven gaps of more than one) pad into a buffer
    whose border alone is zeroed. ``F.pad`` of a channels-last bf16 activation is about 4x slower
    than such a copy, and the copy itself was about an eighth of an EfficientNet evaluation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        pads = []
        for size, k, s, d in zip((h, w), self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        weight = self.weight
        if top == bottom and left == right:
            return F.conv2d(x, weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        if self.dilation == (1, 1) and bottom - top in (0, 1) and right - left in (0, 1):
            weight = F.pad(weight, (right - left, 0, bottom - top, 0))  # a leading zero row / column
            return F.conv2d(x, weight, self.bias, self.stride, (bottom, right), 1, self.groups)
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = torch.empty((n, c, h + top + bottom, w + left + right), dtype=x.dtype, device=x.device,
                          memory_format=fmt)
        out[:, :, top:top + h, left:left + w] = x
        for edge in (out[:, :, :top], out[:, :, top + h:], out[:, :, :, :left], out[:, :, :, left + w:]):
            if edge.numel():
                edge.zero_()  # only the padding: the rest is written once, by the copy
        return F.conv2d(out, weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_pad_convs(module: nn.Module) -> list[str]:
    """Names of timm's ``Conv2dSame`` layers (dynamic TF "SAME" padding) in ``module``."""
    return [name for name, m in module.named_modules()
            if isinstance(m, nn.Conv2d) and type(m).__name__ == "Conv2dSame" and m.padding == (0, 0)]


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``name`` under ``root``."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _after_norm(bn: nn.Module) -> nn.Module:
    """What ``bn`` applies after normalising: timm's BatchNormAct2d has ``drop`` and ``act``."""
    parts = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def fold_state(state: Mapping[str, torch.Tensor], pairs: list[Pair]) -> dict[str, torch.Tensor]:
    """The state dict of the folded encoder for ``state`` (a state dict of the original encoder)."""
    out = dict(state)
    for conv, bn, eps in pairs:
        w = state[f"{conv}.weight"].float()
        scale = state[f"{bn}.weight"].float() / torch.sqrt(state[f"{bn}.running_var"].float() + eps)
        bias = state[f"{bn}.bias"].float() - state[f"{bn}.running_mean"].float() * scale
        if f"{conv}.bias" in state:
            bias = bias + state[f"{conv}.bias"].float() * scale
        out[f"{conv}.weight"] = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
        out[f"{conv}.bias"] = bias
        for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out.pop(f"{bn}.{k}", None)
    return out


class FoldedEncoder:
    """A folded copy of an encoder (see the module docstring): ``module`` to run, ``load(state)`` to
    give it a state dict of the original encoder, ``folded`` whether anything was folded."""

    def __init__(self, encoder: nn.Module, probe: torch.Tensor | None = None) -> None:
        self.pairs = conv_bn_pairs(encoder)
        self.folded = False
        self.module = encoder
        if not self.pairs or probe is None:
            return
        skeleton = copy.deepcopy(encoder).eval()
        for conv, bn, _ in self.pairs:
            conv_mod = skeleton.get_submodule(conv)
            if conv_mod.bias is None:
                conv_mod.bias = nn.Parameter(torch.zeros(conv_mod.out_channels, dtype=conv_mod.weight.dtype,
                                                         device=conv_mod.weight.device))
            _replace(skeleton, bn, _after_norm(skeleton.get_submodule(bn)))
        for name in _same_pad_convs(skeleton):
            old = skeleton.get_submodule(name)
            _replace(skeleton, name, SamePadConv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, 0,
                                                   old.dilation, old.groups, old.bias is not None,
                                                   device=old.weight.device, dtype=old.weight.dtype))
        state = {k: v.detach() for k, v in encoder.state_dict().items()}
        skeleton.load_state_dict(fold_state(state, self.pairs), strict=True)
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            want, got = encoder(probe.float()), skeleton(probe.float())
        encoder.train(was_training)
        err = float((want - got).abs().max()) / max(1.0, float(want.abs().max()))
        if err > PROBE_TOLERANCE:
            log.info("evaluation keeps %d BatchNorm layers unfolded: the folded encoder differs on a probe "
                     "batch (%.2g relative)", len(self.pairs), err)
            return
        self.module, self.folded = skeleton, True

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load ``state`` (a state dict of the original encoder), folded when this encoder is."""
        self.module.load_state_dict(fold_state(state, self.pairs) if self.folded else dict(state), strict=True)
