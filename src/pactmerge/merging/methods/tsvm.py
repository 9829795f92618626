"""TSV-M (Task Singular Vectors: Merging), default alpha 1.0.

Gargiulo et al. 2025, "Task Singular Vectors: Reducing Task Interference in Model Merging"
(CVPR 2025, arXiv 2412.00081). Per matrix key: per task the top ``r = floor(min(m, n) / T)``
singular triplets of ``tau_t``; concatenate ``U = [U_1..U_T]``, ``S``, ``V = [V_1..V_T]``;
whiten both bases by their polar factor; ``tau* = polar(U) diag(S) polar(V)^T``. Vector keys:
mean of the task vectors. The per-task truncations may be randomized (``svd="randomized"``);
the whitening is always exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from pactmerge.merging.linalg import per_matrix, polar, top_svd
from pactmerge.merging.params import SVDOptions
from pactmerge.merging.spec import KeyContext, MethodSpec, linear_grid, mean_of_tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params(SVDOptions):
    """Only the SVD options: the per-task rank is fixed by the method, floor(min(m, n) / T)."""


def concat_tasks(X: Tensor) -> Tensor:
    """(T, B, p, r) -> (B, p, T*r): task-major column blocks [X_1 .. X_T]."""
    T, B, p, r = X.shape
    return X.permute(1, 2, 0, 3).reshape(B, p, T * r)


def whitened_product(U: Tensor, S: Tensor, V: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """polar(U) diag(S) polar(V)^T for U (B, m, k), S (B, k), V (B, n, k), computed in float64 and
    returned in ``dtype``. The 2B polar factors are independent decompositions, run side by side
    (``per_matrix``); the product is formed a block of rows at a time, so no float64 (m, n) is held."""
    B, m = U.shape[:2]
    P = per_matrix(polar, [*U, *V], device=U.device)
    out = U.new_empty(B, m, V.shape[1], dtype=dtype)
    for b in range(B):
        for i in range(0, m, _ROWS):
            out[b, i : i + _ROWS] = (P[b][i : i + _ROWS] * S[b]) @ P[B + b].mT
    return out


_ROWS = 1024


def task_factors(taus: Tensor, params: Params, ctx: KeyContext, num_tasks: int):
    """Top-``r`` triplets (U, S, V) of the tasks in ``taus`` (c, B, m, n), some of ``num_tasks`` tasks
    (``ctx.task_ids`` are theirs); None where r = 0. Each task's triplets depend on it alone."""
    m, n = taus.shape[-2:]
    r = min(m, n) // num_tasks
    return top_svd(taus, r, params, ctx.svd_tags("tsvm")) if r else None


def combine(parts: list, params: Params, ctx: KeyContext, like: Tensor) -> Tensor:
    """The merged (B, m, n) from ``task_factors`` of every task, in task order (the list is consumed);
    ``like``: (B, m, n) in the output dtype."""
    B, m, n = like.shape
    if any(p is None for p in parts):
        # more tasks than min(m, n): no task keeps a singular direction, the key stays at theta0
        diag = ctx.state.setdefault("diagnostics", {}).setdefault("tsvm_zero_rank_keys", [])
        for key in ctx.keys:  # one warning per merge sums these up (engine)
            log.debug(
                "TSV-M: key %r (shape %dx%d) has min(m, n) = %d < T tasks, so r_t = 0: its merged task "
                "vector is zero (the key keeps its pre-trained value)", key, m, n, min(m, n),
            )
            diag.append(key)
        return like.new_zeros(B, m, n)
    # task-major column blocks [X_1 .. X_T], built once; ``parts`` is emptied so its copies go now
    U, V = (torch.cat([concat_tasks(p[i]) for p in parts], -1) for i in (0, 2))
    S = torch.cat([p[1].permute(1, 0, 2).reshape(B, -1) for p in parts], -1)
    parts.clear()
    return whitened_product(U, S, V, like.dtype)


def merge_matrices(taus: Tensor, params: Params, ctx: KeyContext) -> Tensor:
    return combine([task_factors(taus, params, ctx, taus.shape[0])], params, ctx, taus[0])


# the engine may feed the tasks a few at a time (a streaming merge then never holds all T task vectors)
BY_TASK = (task_factors, combine)


SPEC = MethodSpec(
    name="tsvm",
    params_cls=Params,
    merge_matrices=merge_matrices,
    merge_vectors=mean_of_tasks,
    default_alpha=1.0,
    paper="Gargiulo et al. 2025, Task Singular Vectors, CVPR 2025, arXiv 2412.00081",
    alpha_grid=linear_grid(0.0, 2.0, 0.1),
    alpha_bounds=(0.0, 4.0),
)
