"""Iso-CTS (isotropic merging in common and task-specific subspaces), default alpha 1.3.

Marczak et al. 2025, "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces" (ICML 2025, arXiv 2502.04959). Per matrix key with ``d = min(m, n)``:
``s = round(d (1 - f) / T)``, ``c = d - T s``; the common subspace is the top ``c`` singular
triplets of ``Delta = sum_t tau_t`` (exact); each task contributes the top ``s`` triplets of its
residual ``tau_t - U_c U_c^T tau_t`` (randomized allowed); the concatenated bases are whitened
by their polar factors and every singular value is replaced by their mean. Vector keys: mean.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from pactmerge.errors import MergeError
from pactmerge.merging.linalg import sum_tasks_float64, top_svd
from pactmerge.merging.methods.tsvm import concat_tasks, whitened_product
from pactmerge.merging.params import SVDOptions
from pactmerge.merging.spec import KeyContext, MethodSpec, linear_grid, mean_of_tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params(SVDOptions):
    f: float = 0.8  # fraction of min(m, n) given to the common subspace (before rounding)

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.f <= 1.0:
            raise MergeError(f"f must be in [0, 1], got {self.f}")


def subspace_sizes(d: int, T: int, f: float) -> tuple[int, int]:
    """(c, s): common rank and per-task rank for a matrix with min(m, n) = d.

    c can come out negative (e.g. d = 7, T = 2, f = 0: s = 4, c = -1); ``merge_matrices`` refuses that.
    """
    s = round(d * (1.0 - f) / T)
    return d - T * s, s


def merge_matrices(taus: Tensor, params: Params, ctx: KeyContext) -> Tensor:
    T, B, m, n = taus.shape
    c, s = subspace_sizes(min(m, n), T, params.f)
    if c < 0:
        raise MergeError(
            f"Iso-CTS: f={params.f} with T={T} tasks gives c={c} common directions for key {ctx.keys[0]!r} "
            f"(shape {m}x{n}, min(m, n)={min(m, n)}; s=round(min(m, n)*(1-f)/T)={s}, c=min(m, n)-T*s); "
            "raise f or merge fewer tasks"
        )
    if s < 1 and params.f < 1.0:
        # no room for task-specific directions in this key: it is merged as Iso-C (as the reference does)
        diag = ctx.state.setdefault("diagnostics", {}).setdefault("iso_cts_no_task_subspace", [])
        for key in ctx.keys:  # one warning per merge sums these up (engine)
            log.debug(
                "Iso-CTS: key %r (shape %dx%d) has no room for task-specific directions with f=%s and T=%d "
                "(s = round(%d*(1-f)/T) = 0); it is merged as Iso-C", key, m, n, params.f, T, min(m, n),
            )
            diag.append(key)
    Uc, Sc, Vc = top_svd(sum_tasks_float64(taus), c, SVDOptions())  # common subspace: always exact; float64
    # sum, so the task order does not change Delta's bits beyond float64 rounding
    Us, Ss, Vs = [Uc], [Sc], [Vc]
    if s > 0:
        # residuals one task at a time, in the compute dtype; never forms U_c U_c^T
        Ucw = Uc.to(taus.dtype)
        resid = torch.stack([t - Ucw @ (Ucw.mT @ t) for t in taus])  # (T, B, m, n)
        Ut, St, Vt = top_svd(resid, s, params, ctx.svd_tags("iso_cts"))
        Us.append(concat_tasks(Ut))
        Ss.append(St.permute(1, 0, 2).reshape(B, T * s))
        Vs.append(concat_tasks(Vt))
    S = torch.cat(Ss, -1)
    S_iso = S.mean(-1, keepdim=True).expand_as(S)
    return whitened_product(torch.cat(Us, -1), S_iso, torch.cat(Vs, -1), taus.dtype)


SPEC = MethodSpec(
    name="iso_cts",
    params_cls=Params,
    merge_matrices=merge_matrices,
    merge_vectors=mean_of_tasks,
    default_alpha=1.3,
    paper="Marczak et al. 2025, No Task Left Behind (Iso-CTS), arXiv 2502.04959",
    alpha_grid=linear_grid(0.0, 2.0, 0.1),
    alpha_bounds=(0.0, 4.0),
)
