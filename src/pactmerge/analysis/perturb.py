"""The scalar view of the load-bearing wall: noise on the pre-trained weights a task kept.

For task t and every matrix key, the LBW mask holds the ``fraction`` of entries with the
largest pre-trained magnitude ``|W0|`` among those that the task vector leaves small
(``|τt|`` at or below its median over the key); the control mask has the same number of
entries per key, drawn uniformly at random. The fine-tuned encoder ``θt = θ0 + τt`` is then
perturbed inside a mask by relative noise, ``θt ← θt + s·|W0|·ε`` with ``ε ~ N(0, 1)`` on the
masked entries, for increasing strengths ``s``, and evaluated on task t. If the task relies on
the pre-trained core it kept, accuracy falls faster under the LBW mask than under the random one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from pactmerge.errors import ConfigError

log = logging.getLogger(__name__)
Tensor = torch.Tensor


@dataclass
class PerturbConfig:
    """``fraction`` of each matrix key's entries in a mask; noise ``strengths`` (relative to
    ``|W0|``; 0 is the unperturbed reference); ``seed`` of the random mask and of the noise;
    ``split`` evaluated ("val" or "test")."""

    fraction: float = 0.01
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    seed: int = 0
    split: str = "test"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 0.5:
            raise ConfigError(f"perturbation fraction must be in (0, 0.5], got {self.fraction}")
        if any(s < 0 for s in self.strengths) or not self.strengths:
            raise ConfigError(f"perturbation strengths must be >= 0 (and at least one), got {self.strengths}")
        if self.split not in ("val", "test"):
            raise ConfigError(f"split must be 'val' or 'test', got {self.split!r}")


def lbw_mask(w0: Tensor, tau: Tensor, fraction: float) -> Tensor:
    """Boolean mask (shape of ``w0``): the ``round(fraction·numel)`` entries with the largest
    ``|w0|`` among those with ``|tau|`` at or below the median of ``|tau|``."""
    n = max(1, round(fraction * w0.numel()))
    a = tau.detach().abs().flatten().to(torch.float64)
    small = a <= a.median()
    score = torch.where(small, w0.detach().abs().flatten().to(torch.float64), torch.full_like(a, -1.0))
    idx = torch.topk(score, min(n, int(small.sum())), sorted=False).indices
    mask = torch.zeros(w0.numel(), dtype=torch.bool)
    mask[idx] = True
    return mask.view(w0.shape)


def random_mask(shape: torch.Size, count: int, generator: torch.Generator) -> Tensor:
    """Boolean mask of ``shape`` with ``count`` entries set, uniformly at random."""
    numel = 1
    for d in shape:
        numel *= d
    idx = torch.randperm(numel, generator=generator)[:count]
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[idx] = True
    return mask.view(shape)


def build_masks(
    pretrained: Mapping[str, Tensor], finetuned: Mapping[str, Tensor], keys: list[str], cfg: PerturbConfig
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The LBW and the random mask of every key in ``keys`` (same count per key)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    lbw, rnd = {}, {}
    for k in keys:
        w0 = pretrained[k]
        m = lbw_mask(w0, finetuned[k].to(torch.float64) - w0.to(torch.float64), cfg.fraction)
        lbw[k] = m
        rnd[k] = random_mask(w0.shape, int(m.sum()), gen)
    return lbw, rnd


def perturbed_state(
    finetuned: Mapping[str, Tensor],
    pretrained: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    strength: float,
    seed: int,
) -> dict[str, Tensor]:
    """``finetuned`` with ``strength·|W0|·ε`` added on the masked entries of each masked key
    (dtype kept; other keys shared, not copied). Same ``seed``, same noise."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(finetuned)
    if strength == 0:
        return out
    for k, m in masks.items():
        theta = finetuned[k]
        eps = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
        noise = strength * pretrained[k].detach().abs().to(torch.float64) * eps * m
        out[k] = (theta.detach().to(torch.float64) + noise).to(theta.dtype)
    return out


def perturbation_curves(
    pretrained: Mapping[str, Tensor],
    finetuned: Mapping[str, Mapping[str, Tensor]],
    keys: list[str],
    evaluate: Callable[[str, Mapping[str, Tensor]], float],
    cfg: PerturbConfig,
) -> dict[str, dict[str, list[float]]]:
    """Accuracy of each task's fine-tuned encoder against the strength, under both masks.

    ``evaluate(task, state)`` returns the task's accuracy of the encoder with ``state``.
    Returns ``{task: {"strengths": [...], "lbw": [...], "random": [...], "mask_size": n}}``;
    both masks see the same noise draw per strength.
    """
    out: dict[str, dict[str, list[float]]] = {}
    for t, ft in finetuned.items():
        lbw, rnd = build_masks(pretrained, ft, keys, cfg)
        curves: dict[str, list[float]] = {"strengths": list(cfg.strengths), "lbw": [], "random": []}
        for i, s in enumerate(cfg.strengths):
            if s == 0:  # the unperturbed encoder: one evaluation serves both curves
                acc = float(evaluate(t, dict(ft)))
                curves["lbw"].append(acc)
                curves["random"].append(acc)
                continue
            for name, masks in (("lbw", lbw), ("random", rnd)):
                acc = evaluate(t, perturbed_state(ft, pretrained, masks, s, cfg.seed + i))
                curves[name].append(float(acc))
            log.info("perturb %s: strength %.3g: lbw %.4f, random %.4f", t, s, curves["lbw"][-1], curves["random"][-1])
        curves["mask_size"] = int(sum(int(m.sum()) for m in lbw.values()))
        out[t] = curves
    return out
