"""TIES-Merging: trim, elect sign, disjoint merge; on every key, default alpha 0.3.

Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models" (NeurIPS 2023,
arXiv 2306.01708). Per task, the entries of ``tau_t`` with ``|x|`` at least the threshold are
kept (top ``k`` percent; threshold = the ``(D - int(D k / 100))``-th smallest magnitude, as
the reference computes it), over the whole flattened task vector (``threshold_scope="global"``,
the reference) or per key. Elected sign = sign of the sum of the trimmed vectors; an entry
whose sum is zero takes the majority of the elected signs over the whole vector (positive
when their sum is positive, else negative, as the reference). ``tau*`` = mean of the
agreeing non-zero entries (count clamped to 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from pactmerge.errors import MergeError
from pactmerge.merging.params import SVDOptions
from pactmerge.merging.select import kth_smallest_abs
from pactmerge.merging.spec import KeyContext, MethodSpec, TaskVectorStream, linear_grid


@dataclass(frozen=True)
class Params(SVDOptions):
    k: float = 20.0  # percent of entries kept per task
    threshold_scope: Literal["global", "per_key"] = "global"

    def check(self) -> None:
        super().check()
        if not 0 < self.k <= 100:
            raise MergeError(f"k must be a percentage in (0, 100], got {self.k}")


def _rank(total: int, k: float) -> int:
    """1-indexed rank of the threshold among the magnitudes; <= 0 means keep everything."""
    return total - int(total * k / 100)


def prepare(stream: TaskVectorStream, params: Params, state: dict) -> None:
    state["sign_total"] = 0
    state["pending"] = []
    if params.threshold_scope != "global":
        return
    total, num_tasks, dtype = 0, None, None
    for _, x in stream():
        total += x[0].numel()
        num_tasks, dtype = x.shape[0], x.dtype
    if num_tasks is None:
        return
    rank = _rank(total, params.k)
    if rank <= 0:
        state["thresholds"] = torch.zeros(num_tasks, dtype=dtype)
    else:
        state["thresholds"] = kth_smallest_abs(stream, num_tasks, [rank] * num_tasks, dtype)


def _merge_flat(taus: Tensor, params: Params, key: str, state: dict) -> Tensor:
    """taus (T, D) -> merged (D,)."""
    if "thresholds" in state:
        thr = state["thresholds"].to(device=taus.device, dtype=taus.dtype).unsqueeze(1)
    else:
        rank = _rank(taus.shape[1], params.k)
        thr = taus.new_zeros(taus.shape[0], 1) if rank <= 0 else taus.abs().kthvalue(rank, dim=1, keepdim=True).values
    trimmed = taus * (taus.abs() >= thr)
    elected = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    merged = (trimmed * agree).sum(0) / agree.sum(0).clamp_min(1)
    state["sign_total"] = state.get("sign_total", 0) + int(elected.sum().item())
    zero_sum = (elected == 0) & (trimmed != 0).any(0)
    if bool(zero_sum.any()):  # resolved once the majority sign of the whole vector is known
        idx = torch.nonzero(zero_sum).flatten()
        sel = trimmed[:, idx]
        pos, neg = sel.clamp_min(0), sel.clamp_max(0)
        pos_mean = pos.sum(0) / (pos != 0).sum(0).clamp_min(1)
        neg_mean = neg.sum(0) / (neg != 0).sum(0).clamp_min(1)
        state.setdefault("pending", []).append((key, idx.cpu(), pos_mean.cpu(), neg_mean.cpu()))
    return merged


def merge_vectors(taus: Tensor, params: Params, ctx: KeyContext) -> Tensor:
    shape = taus.shape[1:]
    return _merge_flat(taus.reshape(taus.shape[0], -1), params, ctx.keys[0], ctx.state).reshape(shape)


def merge_matrices(taus: Tensor, params: Params, ctx: KeyContext) -> Tensor:
    T, B = taus.shape[:2]
    out = [_merge_flat(taus[:, b].reshape(T, -1), params, ctx.keys[b], ctx.state) for b in range(B)]
    return torch.stack(out).reshape(taus.shape[1:])


def finalize(tau: dict[str, Tensor], params: Params, state: dict) -> None:
    positive = state.get("sign_total", 0) > 0
    for key, idx, pos_mean, neg_mean in state.get("pending", []):
        flat = tau[key].view(-1)
        flat[idx] = (pos_mean if positive else neg_mean).to(flat.dtype)


SPEC = MethodSpec(
    name="ties",
    params_cls=Params,
    merge_matrices=merge_matrices,
    merge_vectors=merge_vectors,
    default_alpha=0.3,
    paper="Yadav et al. 2023, TIES-Merging, arXiv 2306.01708",
    alpha_grid=linear_grid(0.05, 1.0, 0.05),
    alpha_bounds=(0.0, 3.0),
    prepare=prepare,
    finalize=finalize,
)
