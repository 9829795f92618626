"""Consensus merging (TALL masks): keep only the entries of the multi-task vector that at least
``k`` tasks rely on; default alpha 0.3.

Wang et al. 2024, "Localizing Task Information for Improved Model Merging and Compression"
(ICML 2024, arXiv 2405.07813). ``tau_MTL`` = the Task Arithmetic sum of the task vectors
(``base="task_arithmetic"``) or this project's TIES merge of them (``base="ties"``, top
``ties_k`` percent). Task t's TALL mask: ``m_t = |tau_t| > lam * |tau_MTL - tau_t|`` entrywise
(strict, as the reference ``generate_task_masks``; ``lam`` is the paper's lambda). The
consensus mask keeps the entries that are on in at least ``k`` tasks' masks, and
``tau* = consensus * tau_MTL``; ``k = 0`` is the base method itself. Every floating-point key
is masked. The paper selects lambda per task in 0.2-0.6 on validation data; this data-free
form uses one ``lam`` for all tasks, default 0.6 as FusionBench's ``tall_mask_lambda``, and
``k = 2`` (the paper's choice: removes catastrophic and selfish weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from pactmerge.errors import MergeError
from pactmerge.merging.methods import ties
from pactmerge.merging.params import SVDOptions
from pactmerge.merging.spec import KeyContext, MethodSpec, TaskVectorStream, linear_grid


@dataclass(frozen=True)
class Params(SVDOptions):
    lam: float = 0.6  # lambda of the TALL masks: task t holds an entry when |tau_t| > lam |tau_MTL - tau_t|
    k: int = 2  # minimum number of tasks whose masks hold an entry for it to be kept
    base: Literal["task_arithmetic", "ties"] = "task_arithmetic"  # how tau_MTL is merged
    ties_k: float = 20.0  # base="ties": percent of entries TIES keeps per task

    def check(self) -> None:
        super().check()
        if self.lam < 0:
            raise MergeError(f"lam must be >= 0, got {self.lam}")
        if self.k < 0:
            raise MergeError(f"k must be a number of tasks >= 0, got {self.k}")
        if not 0 < self.ties_k <= 100:
            raise MergeError(f"ties_k must be a percentage in (0, 100], got {self.ties_k}")


def consensus_mask(taus: Tensor, multi: Tensor, lam: float, k: int) -> Tensor:
    """Entries (of ``multi``'s shape) on in at least ``k`` of the tasks' TALL masks; taus (T, *shape)."""
    masks = taus.abs() > lam * (multi.unsqueeze(0) - taus).abs()
    return masks.sum(0) >= k


def _ties_params(params: Params) -> ties.Params:
    return ties.Params(k=params.ties_k)


def prepare(stream: TaskVectorStream, params: Params, state: dict) -> None:
    if params.base == "ties":
        ties.prepare(stream, _ties_params(params), state)


def _record_pending(before: int, taus: Tensor, keys: list[str], state: dict) -> None:
    """TIES fixes a few entries in ``finalize``; keep their task values to mask them there."""
    for key, idx, _, _ in state.get("pending", [])[before:]:
        b = keys.index(key)
        flat = taus[:, b].reshape(taus.shape[0], -1)
        state.setdefault("consensus_pending", []).append((key, idx, flat[:, idx.to(flat.device)].cpu()))


def merge_matrices(taus: Tensor, params: Params, ctx: KeyContext) -> Tensor:
    if params.base == "ties":
        before = len(ctx.state.get("pending", []))
        multi = ties.merge_matrices(taus, _ties_params(params), ctx)
        _record_pending(before, taus, ctx.keys, ctx.state)
    else:
        multi = taus.sum(0)
    return multi * consensus_mask(taus, multi, params.lam, params.k)


def merge_vectors(taus: Tensor, params: Params, ctx: KeyContext) -> Tensor:
    return merge_matrices(taus.unsqueeze(1), params, ctx).squeeze(0)


def finalize(tau: dict[str, Tensor], params: Params, state: dict) -> None:
    if params.base != "ties":
        return
    ties.finalize(tau, _ties_params(params), state)
    for key, idx, task_values in state.get("consensus_pending", []):
        flat = tau[key].view(-1)
        keep = consensus_mask(task_values.to(flat.dtype), flat[idx], params.lam, params.k)
        flat[idx] = flat[idx] * keep


SPEC = MethodSpec(
    name="consensus",
    params_cls=Params,
    merge_matrices=merge_matrices,
    merge_vectors=merge_vectors,
    default_alpha=0.3,
    paper="Wang et al. 2024, Localizing Task Information (TALL masks, Consensus merging), ICML 2024, arXiv 2405.07813",
    alpha_grid=linear_grid(0.1, 1.0, 0.15),
    alpha_bounds=(0.0, 3.0),
    prepare=prepare,
    finalize=finalize,
)
