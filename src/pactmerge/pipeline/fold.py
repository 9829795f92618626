"""Evaluation-time BatchNorm folding: an encoder whose eval-mode BatchNorms are folded into convolutions.

In evaluation a BatchNorm that follows a convolution is an affine map per channel, so it can be
folded into that convolution: ``W' = W · γ/√(σ² + ε)`` and ``b' = β − μ · γ/√(σ² + ε)`` (plus the
convolution's own bias, scaled). ``FoldedEncoder(encoder, probe)`` builds, once, a copy of
``encoder`` in which every such pair is one ``FoldedConv2d`` with a bias that also applies what the
BatchNorm applied after normalising (timm's ``BatchNormAct2d`` keeps its activation and dropout),
and timm's ``Conv2dSame`` layers pad without ``F.pad``; ``load(state)`` folds a state dict of the
original encoder into it. On the CPU without gradients each such convolution is one oneDNN call
with its activation fused. One pass instead of a convolution, a normalisation and an activation:
about 1.8x the throughput of the unfolded encoder for the offline default's EfficientNet on the
CPU under bf16 (1.7x from folding, 1.07x to 1.14x more from fusing the activation;
``benchmarks/eval_offline.py`` compares the three).

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
from functools import lru_cache
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


_POST_OPS = {nn.ReLU: ("relu", []), nn.SiLU: ("swish", [])}  # Hardtanh (ReLU6 too): _post_op


@lru_cache(maxsize=1)
def _fused_conv():
    """oneDNN's convolution with an elementwise post-op (``torch.ops.mkldnn._convolution_pointwise``),
    or None where this build of torch has no oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The type CPU autocast casts convolutions to, None when it is off (the device-type API of torch
    2.4 and later, the CPU-only one of earlier releases)."""
    try:
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    except (AttributeError, TypeError):
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def _post_op(act: nn.Module) -> tuple[str, list[float]] | None:
    """oneDNN's name and scalars for applying ``act`` after a convolution; None when it has none."""
    parts = [m for m in (act if isinstance(act, nn.Sequential) else [act]) if not isinstance(m, nn.Identity)]
    if not parts:
        return "none", []
    if len(parts) > 1:
        return None
    if isinstance(parts[0], nn.Hardtanh):  # ReLU6 included
        return "hardtanh", [float(parts[0].min_val), float(parts[0].max_val)]
    return _POST_OPS.get(type(parts[0]))


class FoldedConv2d(nn.Conv2d):
    """A convolution of the folded encoder, with what its BatchNorm applied after normalising (``act``:
    an activation, or ``nn.Identity``) and, for timm's ``Conv2dSame``, TensorFlow's "SAME" padding
    (``same=True``). Its state is a ``Conv2d``'s (``weight``, ``bias``).

    **SAME padding without copying the input.** SAME pads ``P // 2`` before and ``P - P // 2``
    after; when those are equal the convolution's own symmetric padding does it, and when the far
    side needs one more (a strided convolution of an even size, as in EfficientNet), a kernel one
    larger with a leading row and column of zeros, padded by the far side's amount on both sides,
    reads exactly the same windows: output ``i`` sees inputs ``s·i - top ... s·i - top + k - 1``
    either way, and the extra tap multiplies zero. Other cases (dilation, uneven gaps of more than
    one) pad into a buffer whose border alone is zeroed. ``F.pad`` of a channels-last bf16
    activation is about 4x slower than such a copy, and the copy itself was about an eighth of an
    EfficientNet evaluation.

    **One pass on the CPU.** Without gradients on the CPU, the convolution, its bias and the
    activation (ReLU, ReLU6 and other Hardtanh, SiLU, or none) run as one oneDNN call that applies
    the activation while each output block is still in cache (``torch.ops.mkldnn.
    _convolution_pointwise``, the call inductor emits for this pattern), instead of a convolution
    and a second pass over its output. On the offline default's EfficientNet at 64x64 under bf16
    that is 1.07x to 1.14x the throughput of two passes, with the same bits as them in float32
    and in bf16 (the same convolution kernels; ReLU and ReLU6 are exact). Under CPU autocast the
    input, weight and bias are cast to the autocast type, as autocast casts ``conv2d``'s; the cast
    weight is kept until the weight changes (``load_state_dict`` writes in place, which the
    weight's version counter records). Elsewhere (CUDA, gradients, other activations, ``fuse=False``)
    it runs ``F.conv2d`` and then ``act``.
    """

    def __init__(self, *args, same: bool = False, act: nn.Module | None = None, fuse: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.same = same
        self.act = act if act is not None else nn.Identity()
        self.post = _post_op(self.act) if fuse else None  # (oneDNN post-op, its scalars); None: two passes
        self._cast: tuple | None = None  # (key, weight, bias) in the type of the last fused call

    def _geometry(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """(input, padding, leading zero columns and rows of the kernel) of the convolution for ``x``."""
        if not self.same:
            return x, self.padding, (0, 0)
        n, c, h, w = x.shape
        pads = []
        for size, k, s, d in zip((h, w), self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top == bottom and left == right:
            return x, (top, left), (0, 0)
        if self.dilation == (1, 1) and bottom - top in (0, 1) and right - left in (0, 1):
            return x, (bottom, right), (right - left, bottom - top)
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = torch.empty((n, c, h + top + bottom, w + left + right), dtype=x.dtype, device=x.device,
                          memory_format=fmt)
        out[:, :, top:top + h, left:left + w] = x
        for edge in (out[:, :, :top], out[:, :, top + h:], out[:, :, :, :left], out[:, :, :, left + w:]):
            if edge.numel():
                edge.zero_()  # only the padding: the rest is written once, by the copy
        return out, (0, 0), (0, 0)

    def _weight(self, lead: tuple[int, int]) -> torch.Tensor:
        return F.pad(self.weight, (lead[0], 0, lead[1], 0)) if any(lead) else self.weight

    def _fused(self, x: torch.Tensor, lead: tuple[int, int]) -> tuple | None:
        """(input, weight, bias) of the fused call, cast as autocast casts ``conv2d``'s; None when it
        does not apply."""
        if self.post is None or x.device.type != "cpu" or torch.is_grad_enabled() or _fused_conv() is None:
            return None
        dtype = _cpu_autocast_dtype() or x.dtype
        if dtype not in (torch.float32, torch.bfloat16) or x.dtype not in (torch.float32, torch.bfloat16):
            return None
        b = self.bias
        key = (dtype, lead, self.weight._version, self.weight.data_ptr(),
               None if b is None else (b._version, b.data_ptr()))
        if self._cast is None or self._cast[0] != key:
            self._cast = (key, self._weight(lead).to(dtype), None if b is None else b.to(dtype))
        return x.to(dtype), self._cast[1], self._cast[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding, lead = self._geometry(x)
        fused = self._fused(x, lead)
        if fused is not None:
            attr, scalars = self.post
            return _fused_conv()(*fused, list(padding), list(self.stride), list(self.dilation), self.groups,
                                 attr, scalars, "")
        return self.act(F.conv2d(x, self._weight(lead), self.bias, self.stride, padding, self.dilation,
                                 self.groups))


def _is_same_pad(conv: nn.Module) -> bool:
    """Whether ``conv`` is timm's ``Conv2dSame`` (dynamic TF "SAME" padding, its own padding zero)."""
    return isinstance(conv, nn.Conv2d) and type(conv).__name__ == "Conv2dSame" and conv.padding == (0, 0)


def _same_pad_convs(module: nn.Module) -> list[str]:
    """Names of timm's ``Conv2dSame`` layers in ``module``."""
    return [name for name, m in module.named_modules() if _is_same_pad(m)]


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``name`` under ``root``."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _replaceable(conv: nn.Module) -> bool:
    """Whether ``conv`` computes exactly what a ``FoldedConv2d`` computes: a plain ``Conv2d`` with zero
    padding, or timm's ``Conv2dSame`` (subclasses that change the weight, such as weight
    standardisation, are kept as they are)."""
    return ((type(conv) is nn.Conv2d or _is_same_pad(conv)) and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple))


def _folded_conv(old: nn.Conv2d, act: nn.Module | None, *, bias: bool, fuse: bool) -> FoldedConv2d:
    """A ``FoldedConv2d`` with ``old``'s geometry (its state is loaded afterwards)."""
    same = _is_same_pad(old)
    return FoldedConv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, 0 if same else old.padding,
                        old.dilation, old.groups, bias, same=same, act=act, fuse=fuse, device=old.weight.device,
                        dtype=old.weight.dtype)


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
    give it a state dict of the original encoder, ``folded`` whether anything was folded. ``fuse=False``
    keeps each activation a pass of its own (``FoldedConv2d``; for comparisons, such as
    ``benchmarks/eval_offline.py``)."""

    def __init__(self, encoder: nn.Module, probe: torch.Tensor | None = None, *, fuse: bool = True) -> None:
        self.pairs = conv_bn_pairs(encoder)
        self.folded = False
        self.module = encoder
        if not self.pairs or probe is None:
            return
        skeleton = copy.deepcopy(encoder).eval()
        for conv, bn, _ in self.pairs:
            conv_mod, after = skeleton.get_submodule(conv), _after_norm(skeleton.get_submodule(bn))
            if _replaceable(conv_mod):  # the convolution applies what the BatchNorm applied after it
                _replace(skeleton, conv, _folded_conv(conv_mod, after, bias=True, fuse=fuse))
                _replace(skeleton, bn, nn.Identity())
                continue
            if conv_mod.bias is None:
                conv_mod.bias = nn.Parameter(torch.zeros(conv_mod.out_channels, dtype=conv_mod.weight.dtype,
                                                         device=conv_mod.weight.device))
            _replace(skeleton, bn, after)
        for name in _same_pad_convs(skeleton):  # SAME convolutions without a BatchNorm after them
            old = skeleton.get_submodule(name)
            _replace(skeleton, name, _folded_conv(old, None, bias=old.bias is not None, fuse=fuse))
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
