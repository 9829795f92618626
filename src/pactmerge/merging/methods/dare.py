"""DARE: drop and rescale each task vector, then Task Arithmetic (or TIES); default alpha 0.3.

Yu et al. 2024, "Language Models are Super Mario: Absorbing Abilities from Homologous Models
as a Free Lunch" (ICML 2024, arXiv 2311.03099). Per task, each entry of ``tau_t`` is dropped
with probability ``p`` and the kept ones are rescaled by ``1 / (1 - p)``; the rescaled vectors
are then merged by Task Arithmetic (``base="task_arithmetic"``, the sum) or by TIES
(``base="ties"``, this project's TIES: trim to the top ``ties_k`` percent, elect signs,
disjoint mean). Every floating-point key is dropped, as FusionBench's
``only_on_linear_weights: false``; an entry is kept when its uniform draw exceeds ``p``, as
FusionBench's ``param_random_drop_``. Default ``p = 0.5`` and alpha 0.3: FusionBench's
configuration for CLIP image encoders (the paper's language models use up to p = 0.9).

The masks are random, but reproducible and independent of how a merge is run: the mask of
one key of one task is drawn on the CPU from a generator seeded by (``seed``, key, the task's
identity, see ``KeyContext.task_ids``), never by a position, so neither the order of the
tasks, nor the batching of keys, nor the device changes the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from pactmerge.errors import MergeError
from pactmerge.merging.linalg import derive_seed
from pactmerge.merging.methods import ties
from pactmerge.merging.params import SVDOptions
from pactmerge.merging.spec import KeyContext, MethodSpec, TaskVectorStream, linear_grid


@dataclass(frozen=True)
class Params(SVDOptions):
    p: float = 0.5  # drop probability of each task-vector entry
    base: Literal["task_arithmetic", "ties"] = "task_arithmetic"  # how the rescaled vectors merge
    ties_k: float = 20.0  # base="ties": percent of entries TIES keeps per task

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.p < 1.0:
            raise MergeError(f"p must be a drop probability in [0, 1), got {self.p}")
        if not 0 < self.ties_k <= 100:
            raise MergeError(f"ties_k must be a percentage in (0, 100], got {self.ties_k}")


def keep_mask(key: str, task_id: str, numel: int, p: float, seed: int) -> Tensor:
    """The (numel,) bool keep-mask of one key of one task: uniform draws > ``p`` (CPU generator)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(seed, f"dare|{key}|{task_id}"))
    return torch.rand(numel, generator=gen) > p


def drop_and_rescale(taus: Tensor, keys: list[str], task_ids: tuple[str, ...], params: Params) -> Tensor:
    """DARE on ``taus`` (T, B, *shape) for keys ``keys`` (B): a new tensor, ``taus`` untouched."""
    if len(task_ids) != taus.shape[0]:
        raise MergeError(
            f"dare needs one identity per task to seed its masks; got {len(task_ids)} for {taus.shape[0]} tasks "
            "(merge through pactmerge.merging.merge, which supplies them)"
        )
    if params.p == 0.0:
        return taus.clone()
    T, B = taus.shape[:2]
    numel = taus[0, 0].numel()
    masks = torch.stack([
        torch.stack([keep_mask(key, tid, numel, params.p, params.seed) for key in keys]) for tid in task_ids
    ]).reshape(taus.shape)
    return taus * masks.to(taus.device) / (1.0 - params.p)


def _sum(taus: Tensor) -> Tensor:
    """The Task Arithmetic sum, accumulated in float64 so that the order of the tasks changes no bit."""
    return taus.sum(0, dtype=torch.float64).to(taus.dtype)


def _ties_params(params: Params) -> ties.Params:
    return ties.Params(k=params.ties_k)


def prepare(stream: TaskVectorStream, params: Params, state: dict) -> None:
    if params.base != "ties":
        return
    task_ids = state.get("task_ids", ())

    def dropped():
        for key, x in stream():
            yield key, drop_and_rescale(x.unsqueeze(1), [key], task_ids, params).squeeze(1)

    ties.prepare(dropped, _ties_params(params), state)


def merge_matrices(taus: Tensor, params: Params, ctx: KeyContext) -> Tensor:
    dropped = drop_and_rescale(taus, ctx.keys, ctx.task_ids, params)
    if params.base == "ties":
        return ties.merge_matrices(dropped, _ties_params(params), ctx)
    return _sum(dropped)


def merge_vectors(taus: Tensor, params: Params, ctx: KeyContext) -> Tensor:
    dropped = drop_and_rescale(taus.unsqueeze(1), ctx.keys, ctx.task_ids, params).squeeze(1)
    if params.base == "ties":
        return ties.merge_vectors(dropped, _ties_params(params), ctx)
    return _sum(dropped)


def finalize(tau: dict[str, Tensor], params: Params, state: dict) -> None:
    if params.base == "ties":
        ties.finalize(tau, _ties_params(params), state)


SPEC = MethodSpec(
    name="dare",
    params_cls=Params,
    merge_matrices=merge_matrices,
    merge_vectors=merge_vectors,
    default_alpha=0.3,
    paper="Yu et al. 2024, Language Models are Super Mario (DARE), ICML 2024, arXiv 2311.03099",
    alpha_grid=linear_grid(0.1, 1.0, 0.15),
    alpha_bounds=(0.0, 3.0),
    prepare=prepare,
    finalize=finalize,
    needs_task_ids=True,
)
