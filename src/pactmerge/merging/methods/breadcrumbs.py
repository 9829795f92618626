"""Model Breadcrumbs: mask each layer's smallest and largest task-vector entries, then sum.

Davari & Belilovsky 2024, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse
Masks" (ECCV 2024, arXiv 2312.06795). Per task and per key (a layer's tensor), the entries of
``tau_t`` are ranked by magnitude: the bottom ``beta`` fraction (small perturbations) and the
top ``gamma`` fraction (outliers) are zeroed; ``tau* = sum_t`` of the masked vectors (Task
Arithmetic). With ``D`` entries, the thresholds are the ``floor(beta D)``-th smallest and the
``floor(gamma D)``-th largest magnitude; an entry equal to a threshold is masked, so ties
never depend on an order. Defaults ``beta = 0.85``, ``gamma = 0.01``: this project's choice
within the range the paper explores (85-90% of the entries masked at the bottom, about 1%
of outliers), alpha tuned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pactmerge.errors import MergeError
from pactmerge.merging.params import SVDOptions
from pactmerge.merging.spec import KeyContext, MethodSpec, linear_grid


@dataclass(frozen=True)
class Params(SVDOptions):
    beta: float = 0.85  # fraction of each layer's smallest-magnitude entries masked, per task
    gamma: float = 0.01  # fraction of each layer's largest-magnitude entries (outliers) masked, per task

    def check(self) -> None:
        super().check()
        for name in ("beta", "gamma"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise MergeError(f"{name} must be a fraction in [0, 1), got {getattr(self, name)}")
        if self.beta + self.gamma >= 1.0:
            raise MergeError(f"beta + gamma must be below 1 (else every entry is masked), got {self.beta + self.gamma}")


def breadcrumbs_mask(flat: Tensor, beta: float, gamma: float) -> Tensor:
    """Keep-mask of ``flat`` (N, D), per row: magnitude above the bottom ``beta`` and below the top ``gamma``."""
    mag = flat.abs()
    D = flat.shape[1]
    keep = torch.ones_like(flat, dtype=torch.bool)
    low = int(D * beta)
    if low > 0:
        keep &= mag > mag.kthvalue(low, dim=1, keepdim=True).values
    high = int(D * gamma)
    if high > 0:
        keep &= mag < mag.kthvalue(D - high + 1, dim=1, keepdim=True).values
    return keep


def _merge(taus: Tensor, params: Params) -> Tensor:
    """taus (T, N, *shape) with N same-shape keys -> (N, *shape)."""
    T, N = taus.shape[:2]
    flat = taus.reshape(T * N, -1)
    masked = flat * breadcrumbs_mask(flat, params.beta, params.gamma)
    return masked.reshape(taus.shape).sum(0)


def merge_matrices(taus: Tensor, params: Params, ctx: KeyContext) -> Tensor:
    return _merge(taus, params)


def merge_vectors(taus: Tensor, params: Params, ctx: KeyContext) -> Tensor:
    return _merge(taus.unsqueeze(1), params).squeeze(0)


SPEC = MethodSpec(
    name="breadcrumbs",
    params_cls=Params,
    merge_matrices=merge_matrices,
    merge_vectors=merge_vectors,
    default_alpha=0.3,
    paper="Davari & Belilovsky 2024, Model Breadcrumbs, ECCV 2024, arXiv 2312.06795",
    alpha_grid=linear_grid(0.1, 1.0, 0.15),
    alpha_bounds=(0.0, 3.0),
)
