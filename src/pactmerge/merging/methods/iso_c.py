"""Iso-C (isotropic merging in the common subspace), default alpha 1.3.

Marczak et al. 2025, "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces" (ICML 2025, arXiv 2502.04959). Per matrix key:
``Delta = sum_t tau_t = U S V^T`` (full, exact), ``tau* = mean(S) U V^T``. Vector keys: mean of
the task vectors. ``U V^T`` is the polar factor of ``Delta`` and ``mean(S)`` its nuclear norm
over ``min(m, n)``; both come from one exact float64 decomposition (see ``linalg``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pactmerge.merging.linalg import polar_and_singular_values, sum_tasks_float64
from pactmerge.merging.params import SVDOptions
from pactmerge.merging.spec import KeyContext, MethodSpec, linear_grid, mean_of_tasks


@dataclass(frozen=True)
class Params(SVDOptions):
    """No hyper-parameters of its own: Iso-C's SVD is always exact."""


def merge_matrices(taus: Tensor, params: Params, ctx: KeyContext) -> Tensor:
    P, S = polar_and_singular_values(sum_tasks_float64(taus))  # (B, m, n), (B, min(m, n)); float64 sum: order-free
    return (S.mean(-1)[:, None, None] * P).to(taus.dtype)


SPEC = MethodSpec(
    name="iso_c",
    params_cls=Params,
    merge_matrices=merge_matrices,
    merge_vectors=mean_of_tasks,
    default_alpha=1.3,
    paper="Marczak et al. 2025, No Task Left Behind (Iso-C), arXiv 2502.04959",
    alpha_grid=linear_grid(0.0, 2.0, 0.1),
    alpha_bounds=(0.0, 4.0),
)
