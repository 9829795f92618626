"""Task Arithmetic: ``tau* = sum_t tau_t`` on every key, default alpha 0.3.

Ilharco et al. 2023, "Editing models with task arithmetic" (ICLR 2023, arXiv 2212.04089).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pactmerge.merging.params import SVDOptions
from pactmerge.merging.spec import KeyContext, MethodSpec, linear_grid


@dataclass(frozen=True)
class Params(SVDOptions):
    """No hyper-parameters of its own (the SVD options only matter under ``pact+``)."""


def sum_of_tasks(taus: Tensor, params: Params, ctx: KeyContext) -> Tensor:
    return taus.sum(0)


SPEC = MethodSpec(
    name="task_arithmetic",
    params_cls=Params,
    merge_matrices=sum_of_tasks,
    merge_vectors=sum_of_tasks,
    default_alpha=0.3,
    paper="Ilharco et al. 2023, Editing models with task arithmetic, arXiv 2212.04089",
    alpha_grid=linear_grid(0.05, 1.0, 0.05),
    alpha_bounds=(0.0, 3.0),
)
