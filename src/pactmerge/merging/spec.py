"""The contract between the merge engine and one merge method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor


@dataclass
class KeyContext:
    """What a method sees besides the task vectors: the keys of the current call, a state
    dict shared by all calls of one merge (filled by ``prepare``, read by ``finalize``), and
    the tasks' identities (stable strings, in the order of the task axis).

    ``state["diagnostics"]`` (a dict), when a method fills it, is copied into the result's
    diagnostics.
    """

    keys: list[str]
    state: dict[str, Any] = field(default_factory=dict)
    task_ids: tuple[str, ...] = ()

    def svd_tags(self, purpose: str) -> list[list[str]] | None:
        """Seed tags (T, B) for randomized SVDs of the task vectors of ``keys``: (purpose, key, task
        identity), never a position; None when the tasks' identities are unknown."""
        if not self.task_ids:
            return None
        return [[f"{purpose}|{key}|{tid}" for key in self.keys] for tid in self.task_ids]


# A stream of (key, task vectors (T, *shape) in the compute dtype) over every floating-point key,
# in a fixed order, after any preprocessing (PACT). Calling the factory again restarts it.
TaskVectorStream = Callable[[], Iterator[tuple[str, Tensor]]]


@dataclass(frozen=True)
class MethodSpec:
    """A merge method: typed parameters, the rule on matrix keys and on vector keys.

    ``merge_matrices(taus (T, B, m, n), params, ctx) -> (B, m, n)``: B same-shape matrix keys
    (``ctx.keys``) merged at once. ``merge_vectors(taus (T, *shape), params, ctx) -> shape``:
    one vector key. Optional ``prepare(stream, params, state)`` runs before (for quantities
    over the whole task vector) and ``finalize(tau, params, state)`` after the per-key pass.
    ``symmetric``: the result does not depend on the order of the tasks. ``alpha_grid``: the
    scaling coefficients tried on validation data by default. ``alpha_bounds``: the hard limits
    (lo, hi) of the α search: when the best α lies on an end of the searched range, the range
    is widened on that side, never beyond these bounds (``pact+X`` uses X's bounds).
    ``needs_task_ids``: the method draws random numbers per task (DARE's masks), so the engine
    always supplies the tasks' identities (content fingerprints when none are given): in
    ``ctx.task_ids`` and, for ``prepare``, in ``state["task_ids"]``.
    """

    name: str
    params_cls: type
    merge_matrices: Callable[[Tensor, Any, KeyContext], Tensor]
    merge_vectors: Callable[[Tensor, Any, KeyContext], Tensor]
    default_alpha: float
    paper: str
    symmetric: bool = True
    prepare: Callable[[TaskVectorStream, Any, dict], None] | None = None
    finalize: Callable[[dict[str, Tensor], Any, dict], None] | None = None
    pact: bool = False
    base: str = ""
    alpha_grid: tuple[float, ...] = ()  # α values searched on validation data (``pact+X``: X's grid)
    alpha_bounds: tuple[float, float] = (0.0, 4.0)  # hard limits when the α range is widened
    needs_task_ids: bool = False


def linear_grid(start: float, stop: float, step: float) -> tuple[float, ...]:
    """``start, start + step, ..., stop`` (inclusive), each rounded to 10 decimals."""
    n = int(round((stop - start) / step))
    return tuple(round(start + step * i, 10) for i in range(n + 1))


def mean_of_tasks(taus: Tensor, params: Any = None, ctx: KeyContext | None = None) -> Tensor:
    """The plain mean of the task vectors over the task axis (the default rule for vector keys).

    Summed in float64, so the order of the tasks changes nothing beyond float64 rounding."""
    acc = taus[0].to(torch.float64, copy=True)
    for t in taus[1:]:  # one task at a time: no float64 copy of the whole stack
        acc += t
    return (acc / taus.shape[0]).to(taus.dtype)
