"""PACT: Preserving Anchored Cores in Task-vectors (arXiv 2606.18627), a preprocessing step.

The paper's text beyond its abstract is not available; the formulation is the project's
specification of PACT (written out in ``docs/merging.md``), which keeps the structure of the
public code that cites the paper but corrects its linear algebra:
``V0`` comes from the real pre-trained matrix ``W0`` (never a difference such as
``theta0 - theta0``, which is zero), and every union of subspaces is orthonormalised with a
rank-revealing SVD that drops directions below ``rtol`` (never plain QR, which invents
spurious directions for rank-deficient or wide concatenations).

For a matrix key with ``W0`` (m, n), all bases living in the input space R^n:
  1. ``V0``  = top-K right singular vectors of ``W0``;
  2. ``V_t`` = top-k right singular vectors of ``tau_t`` (the task core);
  3. ``R_t`` = orth((I - V_t V_t^T) V0): core directions task t's update leaves alone;
  4. ``P_j`` = orth(union of R_i), i over ``protect``: ``others`` (i != j), ``self`` (i = j),
     ``all`` (``P_j = V0``);
  5. ``tau_j' = tau_j - (tau_j P_j) P_j^T`` (no n x n projector is formed).
Guard: if dim(P_j) > ``guard * n`` the key of task j is left unchanged and flagged. Steps 1-2
may use a randomized SVD (``svd="randomized"``); steps 3-4 are exact.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch
from torch import Tensor

from pactmerge.errors import MergeError
from pactmerge.merging.keys import KeyPolicy, as_matrix, layer_of
from pactmerge.merging.linalg import energy_rank, orth_masked, top_svd
from pactmerge.merging.params import SVDOptions
from pactmerge.merging.sources import require_same_layout
from pactmerge.merging.task_vector import TaskVector


@dataclass(frozen=True)
class PACTConfig:
    """PACT's own hyper-parameters (defaults: the paper's K = 15, k = 8).

    PACT's namespace: these never share a mapping with the base method's parameters (TIES'
    ``k`` is a percentage, PACT's ``k`` a rank). How the truncated SVDs are computed (``svd``,
    ``oversample``, ``power_iters``, ``seed``) is a merge-wide ``SVDOptions`` that PACT and the
    base method share; it is passed separately. ``include`` / ``exclude``: fnmatch patterns
    of the matrix keys PACT cleans (on top of ``KeyPolicy.pact_include``); the base method
    still merges every key.
    """

    K: int = 15  # pre-trained core rank (rank_mode="fixed")
    k: int = 8  # task core rank (rank_mode="fixed")
    rank_mode: Literal["fixed", "fraction", "energy"] = "fixed"
    K_fraction: float = 0.02  # K = round(K_fraction * min(m, n)) (rank_mode="fraction")
    k_fraction: float = 0.01
    tau_pre: float = 0.85  # energy share of ||W0||_F^2 kept by V0 (rank_mode="energy")
    tau_task: float = 0.95  # energy share of ||tau_t||_F^2 kept by V_t
    protect: Literal["others", "self", "all"] = "others"
    guard: float = 0.5  # leave a key unchanged when dim(P_j) > guard * n
    rtol: float = 1e-6  # rank-revealing tolerance of orth, relative to the largest singular value
    include: tuple[str, ...] = ("*",)  # matrix keys PACT cleans (fnmatch patterns)
    exclude: tuple[str, ...] = ()  # matrix keys PACT leaves alone

    def check(self) -> None:
        if self.K < 0 or self.k < 0:
            raise MergeError(f"K and k must be >= 0, got K={self.K}, k={self.k}")
        for name in ("K_fraction", "k_fraction", "tau_pre", "tau_task", "guard"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise MergeError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.rtol < 1:
            raise MergeError(f"rtol must be in (0, 1), got {self.rtol}")

    def applies(self, key: str) -> bool:
        """Whether PACT cleans matrix key ``key`` under ``include`` / ``exclude``."""
        return any(fnmatch.fnmatchcase(key, p) for p in self.include) and not any(
            fnmatch.fnmatchcase(key, p) for p in self.exclude
        )


def intrusion_energy(tau: Tensor, V0: Tensor) -> float:
    """``||tau V0||_F^2 / ||tau||_F^2`` for tau (m, n), V0 (n, K) orthonormal; 0.0 for a zero tau."""
    tau, V0 = tau.double(), V0.double()
    total = float(tau.pow(2).sum())
    return float((tau @ V0).pow(2).sum()) / total if total > 0 else 0.0


def _ranks(
    w0: Tensor, taus: Tensor, cfg: PACTConfig, keys: Sequence[str], svd: SVDOptions, pre_tags=None, task_tags=None
) -> tuple[Tensor, Tensor]:
    """Per-key K (B,) and per-task-and-key k (T, B), validated against min(m, n).

    ``rank_mode="energy"`` under ``svd="randomized"`` uses growing randomized sketches, never a
    full spectrum (see ``linalg.energy_rank``)."""
    T, B, m, n = taus.shape
    d = min(m, n)
    if cfg.rank_mode == "energy":
        K = energy_rank(w0, cfg.tau_pre, svd, pre_tags)
        k = energy_rank(taus, cfg.tau_task, svd, task_tags)
        return K, k
    if cfg.rank_mode == "fraction":
        K, k = round(cfg.K_fraction * d), round(cfg.k_fraction * d)
    else:
        K, k = cfg.K, cfg.k
    for name, val in (("K", K), ("k", k)):
        if val > d:
            raise MergeError(
                f"PACT: {name}={val} is larger than min(m, n)={d} of key {keys[0]!r} (shape {m}x{n}); "
                f"lower {name}, or restrict PACT to larger matrices with pact_include"
            )
    return torch.full((B,), K, dtype=torch.long), torch.full((T, B), k, dtype=torch.long)


def _masked_top_vectors(A: Tensor, ranks: Tensor, svd: SVDOptions, tags=None) -> Tensor:
    """Top right singular vectors of A (..., m, n) with per-matrix rank ``ranks`` (...,): (..., n, max rank)."""
    rmax = int(ranks.max()) if ranks.numel() else 0
    _, _, V = top_svd(A, rmax, svd, tags)
    cols = torch.arange(rmax, device=V.device)
    return V * (cols < ranks.to(V.device).unsqueeze(-1)).unsqueeze(-2)


def pact_filter_batch(
    w0: Tensor,
    taus: Tensor,
    cfg: PACTConfig,
    keys: Sequence[str],
    svd: SVDOptions | None = None,
    task_ids: Sequence[str] | None = None,
    inplace: bool = False,
) -> tuple[Tensor, list[list[dict]]]:
    """PACT on B same-shape matrix keys: w0 (B, m, n), taus (T, B, m, n) -> (cleaned like taus, diag[b][t]).

    ``inplace``: write the cleaned vectors into ``taus`` (saves one copy of the batch).

    ``svd``: how the truncated SVDs of steps 1-2 are computed (default: exact). Under
    ``svd="randomized"`` the test matrix of ``V0`` is seeded by (seed, key, "pretrained") and
    that of ``V_t`` by (seed, key, ``task_ids[t]``), so the result depends neither on the batch
    nor on the order of the tasks (``task_ids`` defaults to the task positions).
    """
    svd = svd or SVDOptions()
    ids = [str(t) for t in task_ids] if task_ids is not None else [f"#{t}" for t in range(taus.shape[0])]
    pre_tags = [f"pact-pre|{key}|pretrained" for key in keys]
    task_tags = [[f"pact-task|{key}|{tid}" for key in keys] for tid in ids]
    T, B, m, n = taus.shape
    norms = w0.double().flatten(1).norm(dim=1)
    for b in range(B):
        if not norms[b] > 0:
            raise MergeError(
                f"PACT: the pre-trained matrix of key {keys[b]!r} is all zeros, so it has no core to protect; "
                "exclude the key from PACT (pact_include) or merge without pact+"
            )
    K, k = _ranks(w0, taus, cfg, keys, svd, pre_tags, task_tags)
    V0 = _masked_top_vectors(w0, K, svd, pre_tags)  # (B, n, K)
    Vt = _masked_top_vectors(taus, k, svd, task_tags)  # (T, B, n, k)
    # R_t's singular values are the sines of the angles between V0 and span(V_t); the tolerance
    # is relative to the largest singular value of V0 (1 for K > 0: orthonormal columns), not to
    # that of the residual itself, which would keep rounding noise when V0 lies inside span(V_t)
    norms = V0.pow(2).sum(-2)  # (B, K)
    ref = norms.amax(-1, keepdim=True).sqrt() if norms.shape[-1] else norms.new_ones(B, 1)  # (B, 1)
    R, _ = orth_masked(V0 - Vt @ (Vt.mT @ V0), cfg.rtol, ref=ref)  # (T, B, n, K')
    if cfg.protect == "all":
        P = V0.unsqueeze(0).expand(T, *V0.shape)
    elif cfg.protect == "self":
        P = R
    else:
        unions = [torch.cat([R[i] for i in range(T) if i != j], dim=-1) if T > 1 else R[j][..., :0] for j in range(T)]
        P, _ = orth_masked(torch.stack(unions), cfg.rtol)
    dims = (P.abs().sum(-2) > 0).sum(-1)  # (T, B): non-zero basis columns
    skipped = dims > cfg.guard * n
    cleaned = taus if inplace else torch.empty_like(taus)
    stats = torch.zeros(4, T, B, dtype=torch.float64)  # before, after, total, kept
    for t in range(T):  # one task at a time in float64 keeps the working set at one task vector
        t64 = taus[t].to(torch.float64, copy=True)  # a copy: with inplace, cleaned[t] overwrites taus[t]
        c64 = torch.where(skipped[t][:, None, None], t64, t64 - (t64 @ P[t]) @ P[t].mT)
        cleaned[t] = c64.to(taus.dtype)
        stats[0, t] = (t64 @ V0).pow(2).sum((-2, -1)).cpu()
        stats[1, t] = (c64 @ V0).pow(2).sum((-2, -1)).cpu()
        stats[2, t] = t64.pow(2).sum((-2, -1)).cpu()
        stats[3, t] = c64.pow(2).sum((-2, -1)).cpu()
    total, kept = stats[2], stats[3]
    nz = total > 0
    safe = total.clamp_min(1e-300)
    before = torch.where(nz, stats[0] / safe, 0.0)
    after = torch.where(kept > 0, stats[1] / kept.clamp_min(1e-300), 0.0)
    removed = torch.where(nz, 1.0 - kept / safe, 0.0)
    diags = [
        [
            {
                "E_in_before": float(before[t, b]),
                "E_in_after": float(after[t, b]),
                "removed_share": float(removed[t, b]),
                "dim_P": int(dims[t, b]),
                "guard_skipped": bool(skipped[t, b]),
                "K": int(K[b]),
                "k": int(k[t, b]),
            }
            for t in range(T)
        ]
        for b in range(B)
    ]
    return cleaned, diags


def pact_filter(
    w0: Tensor,
    taus: list[Tensor],
    config: PACTConfig,
    key: str = "<matrix>",
    svd: SVDOptions | None = None,
    task_ids: Sequence[str] | None = None,
) -> tuple[list[Tensor], list[dict]]:
    """PACT for one matrix key: w0 (m, n), taus T tensors (m, n) -> (cleaned taus, one diagnostics dict per task).

    Math in float64; the cleaned tensors have the dtype of ``taus``. Raises ``MergeError`` for a
    zero ``w0`` or K / k larger than min(m, n).
    """
    if not taus:
        raise MergeError("PACT needs at least one task vector")
    stacked = torch.stack([t for t in taus]).unsqueeze(1)  # (T, 1, m, n)
    cleaned, diags = pact_filter_batch(w0.unsqueeze(0), stacked, config, [key], svd, task_ids)
    return list(cleaned[:, 0].unbind(0)), diags[0]


def clean_task_vectors(
    pretrained: Mapping[str, Tensor],
    task_vectors: Sequence[Mapping[str, Tensor]],
    config: PACTConfig | None = None,
    *,
    key_policy: KeyPolicy | None = None,
    svd: SVDOptions | None = None,
    task_ids: Sequence[str] | None = None,
    clip_ranks: bool = False,
) -> tuple[list[TaskVector], dict]:
    """PACT on whole task vectors: each task vector cleaned against ``pretrained``'s weights.

    ``task_vectors``: T mappings (``TaskVector`` or dicts) with exactly the floating-point keys and
    shapes of ``pretrained``. Every matrix key (``key_policy``, then ``config.include``/``exclude``)
    is cleaned against ``pretrained[key]`` as ``W0`` (a conv kernel viewed as (out, in*kh*kw)), in
    float64; every other key is returned unchanged. ``clip_ranks``: fixed K and k larger than a
    key's ``min(m, n)`` are clipped to it instead of refused. Returns (T cleaned ``TaskVector``s in
    float32, in the order given; the diagnostics as ``summarize`` gives them).
    """
    config = config or PACTConfig()
    policy = key_policy or KeyPolicy()
    if not task_vectors:
        raise MergeError("PACT needs at least one task vector")
    floats = {k: v for k, v in pretrained.items() if v.is_floating_point()}
    for i, tv in enumerate(task_vectors):
        require_same_layout(floats, tv, ref_name="the pre-trained model", other_name=f"task vector {i + 1}")
    out: list[dict[str, Tensor]] = [{} for _ in task_vectors]
    per_key: dict[str, list[dict]] = {}
    for key, w0 in floats.items():
        taus = [tv[key] for tv in task_vectors]
        if policy.kind(key, w0) != "matrix" or not policy.pact_applies(key) or not config.applies(key):
            for t, tau in enumerate(taus):
                out[t][key] = tau.detach().to(torch.float32)
            continue
        w0m = as_matrix(w0.detach()).to(torch.float64)
        cfg = config
        if clip_ranks:
            cfg = dataclasses.replace(config, K=min(config.K, *w0m.shape), k=min(config.k, *w0m.shape))
        stacked = torch.stack([as_matrix(t.detach()).to(device=w0m.device, dtype=torch.float64) for t in taus])
        cleaned, diags = pact_filter_batch(w0m.unsqueeze(0), stacked.unsqueeze(1), cfg, [key], svd, task_ids, inplace=True)
        per_key[key] = diags[0]
        for t in range(len(taus)):
            out[t][key] = cleaned[t, 0].reshape(w0.shape).to(torch.float32)
    return [TaskVector(v) for v in out], summarize(per_key)


def summarize(per_key: dict[str, list[dict]]) -> dict:
    """Diagnostics as data: per key and task, per-layer averages, and an overall summary."""
    fields = ("E_in_before", "E_in_after", "removed_share", "dim_P")

    def average(rows: list[dict]) -> dict:
        out = {f: (sum(r[f] for r in rows) / len(rows) if rows else 0.0) for f in fields}
        out["guard_skipped"] = sum(int(r["guard_skipped"]) for r in rows)
        out["entries"] = len(rows)
        return out

    layers: dict[str, list[dict]] = {}
    for key in per_key:  # layers listed in key order
        layers.setdefault(layer_of(key), [])
    for key in sorted(per_key):  # sums in a fixed order, whatever order the source lists keys in
        layers[layer_of(key)].extend(per_key[key])
    all_rows = [r for key in sorted(per_key) for r in per_key[key]]
    return {
        "keys": per_key,
        "layers": {name: average(rows) for name, rows in layers.items()},
        "overall": {**average(all_rows), "keys": len(per_key)},
    }
