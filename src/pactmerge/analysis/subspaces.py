"""The subspaces of the load-bearing-wall (LBW) analysis, for one matrix key.

All bases live in the input space ``R^n`` of a weight ``W ∈ R^{m×n}`` (columns orthonormal,
float64), as in the PACT specification (``pactmerge.merging.pact``'s docstring):

* pre-trained core ``V0``: top-K right singular vectors of ``W0``;
* task core ``Vt``: top-k right singular vectors of ``τt``;
* reliance space ``Rt = orth((I − Vt Vtᵀ) V0)``: the core directions task t leaves alone.

Exact (not randomized) decompositions: the analysis is run once per checkpoint set, and
exact bases make the diagnostics reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pactmerge.merging.linalg import orth as linalg_orth

Tensor = torch.Tensor


def top_right_vectors(a: Tensor, r: int, svd: str = "exact") -> Tensor:
    """The top ``min(r, rank)`` right singular vectors of ``a`` (m, n) as columns, (n, r') float64.

    Uses the merging core's exact truncated SVD (float64 Gram eigen-decomposition: the same
    bases PACT computes, and an order of magnitude faster than a full LAPACK SVD). Directions
    whose singular value is negligible are dropped, so a zero matrix has an empty core.
    ``svd="randomized"`` uses the core's seeded randomized SVD instead (Halko et al.).
    """
    from pactmerge.merging.linalg import top_svd
    from pactmerge.merging.params import SVDOptions

    a = a.detach().to(torch.float64)
    r = min(r, *a.shape)
    if r <= 0:
        return a.new_zeros(a.shape[1], 0)
    _, s, v = top_svd(a, r, SVDOptions(svd=svd))
    return v[:, s > 0].contiguous()


def orth(a: Tensor, rtol: float = 1e-6) -> Tensor:
    """Rank-revealing orthonormal basis of the column space of ``a`` (n, c) -> (n, r) float64: the
    merging core's ``linalg.orth`` (directions with singular value below ``rtol`` times the largest dropped)."""
    return linalg_orth(a.to(torch.float64), rtol)


def energy_share(tau: Tensor, basis: Tensor) -> float:
    """``‖τ B‖F² / ‖τ‖F²`` for an orthonormal basis ``B`` (n, r): the share of ``τ``'s energy that
    writes into span(B). 0 for a zero ``τ`` or an empty basis."""
    tau = tau.to(torch.float64)
    total = float(tau.square().sum())
    if total == 0.0 or basis.shape[1] == 0:
        return 0.0
    return float((tau @ basis).square().sum()) / total


def subspace_similarity(vi: Tensor, vj: Tensor) -> float:
    """``‖Viᵀ Vj‖F² / k`` with k the smaller of the two ranks: 1 for equal spaces, 0 for orthogonal ones."""
    k = min(vi.shape[1], vj.shape[1])
    if k == 0:
        return 0.0
    return float((vi.T @ vj).square().sum()) / k


@dataclass
class KeySpaces:
    """The LBW subspaces of one matrix key: ``v0`` (n, K'), per task ``cores[t]`` (n, k') and
    ``reliance[t]`` (n, r_t); ``taus[t]`` are the task vectors as (m, n) float64."""

    v0: Tensor
    cores: list[Tensor]
    reliance: list[Tensor]
    taus: list[Tensor]


def key_spaces(w0: Tensor, taus: list[Tensor], K: int, k: int, rtol: float = 1e-6, svd: str = "exact") -> KeySpaces:
    """Compute ``V0``, every ``Vt`` and every ``Rt`` for one key (2-D ``w0`` and ``taus``, any device)."""
    v0 = top_right_vectors(w0, K, svd)
    t64 = [t.detach().to(torch.float64) for t in taus]
    cores = [top_right_vectors(t, k, svd) for t in t64]
    reliance = [orth(v0 - vt @ (vt.T @ v0), rtol) for vt in cores]
    return KeySpaces(v0=v0, cores=cores, reliance=reliance, taus=t64)


def similarity_matrix(spaces: KeySpaces) -> list[list[float]]:
    """Sim(i, j) between the task cores, a T×T nested list (symmetric, 1 on the diagonal)."""
    c = spaces.cores
    return [[subspace_similarity(c[i], c[j]) for j in range(len(c))] for i in range(len(c))]


def interference_matrix(spaces: KeySpaces, taus: list[Tensor] | None = None) -> list[list[float]]:
    """Inf(i, j) = ``‖τj Ri‖F² / ‖τj‖F²`` (row i: whose reliance space, column j: whose update).

    ``taus`` replaces the task vectors (e.g. the PACT-cleaned ones); the reliance spaces stay
    those of the original task vectors."""
    taus = spaces.taus if taus is None else taus
    r = spaces.reliance
    widths = [b.shape[1] for b in r]
    stacked = torch.cat(r, dim=1)  # (n, Σ r_i): one product per task instead of T
    out = [[0.0] * len(taus) for _ in r]
    for j, tau in enumerate(taus):
        tau = tau.to(torch.float64)
        total = float(tau.square().sum())
        if total == 0.0:
            continue
        energy = (tau @ stacked).square().sum(0)  # (Σ r_i,) energy per basis column
        for i, part in enumerate(energy.split(widths)):
            out[i][j] = float(part.sum()) / total
    return out
