"""Evaluation-time BatchNorm folding: an encoder whose eval-mode BatchNorms are folded into convolutions.

In evaluation a BatchNorm that follows a convolution is an affine map per channel, so it can be
folded into that convolution: ``W' = W · γ/√(σ² + ε)`` and ``b' = β − μ · γ/√(σ² + ε)`` (plus the
convolution's own bias, scaled). ``FoldedEncoder(encoder, probe)`` builds, once, a copy of
``encoder`` in which every such pair is one convolution with a bias and the BatchNorm is replaced
by what it applied after normalising (timm's ``BatchNormAct2d`` keeps its activation and dropout);
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
from typing import Mapping

import torch
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
            bn_mod = skeleton.get_submodule(bn)
            conv_mod = skeleton.get_submodule(conv)
            if conv_mod.bias is None:
                conv_mod.bias = nn.Parameter(torch.zeros(conv_mod.out_channels, dtype=conv_mod.weight.dtype,
                                                         device=conv_mod.weight.device))
            parent, _, child = bn.rpartition(".")
            setattr(skeleton.get_submodule(parent) if parent else skeleton, child, _after_norm(bn_mod))
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
