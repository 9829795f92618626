"""MagMax: per entry, the task update of largest magnitude; default alpha 0.5.

Marczak et al. 2024, "MagMax: Leveraging Model Merging for Seamless Continual Learning"
(ECCV 2024, arXiv 2407.06322). ``tau*[i] = tau_{t*}[i]`` with ``t* = argmax_t |tau_t[i]|``, on
every floating-point key. Where tasks of different values tie on the largest magnitude (``+a``
and ``-a``), the positive one is taken, so the result does not depend on the order of the
tasks (the reference keeps the later task's value). Default alpha 0.5: the official
8-dataset script (``scaling_coef = 0.5``), as FusionBench.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pactmerge.merging.params import SVDOptions
from pactmerge.merging.spec import KeyContext, MethodSpec, linear_grid


@dataclass(frozen=True)
class Params(SVDOptions):
    """No hyper-parameters of its own (the SVD options only matter under ``pact+``)."""


def max_magnitude(taus: Tensor, params: Params = None, ctx: KeyContext | None = None) -> Tensor:
    """taus (T, *shape) -> shape: per entry the value of largest magnitude (the larger value on a tie)."""
    mag = taus.abs()
    top = mag.amax(0, keepdim=True)
    candidates = torch.where(mag == top, taus, torch.full_like(taus, float("-inf")))
    return candidates.amax(0)


SPEC = MethodSpec(
    name="magmax",
    params_cls=Params,
    merge_matrices=max_magnitude,
    merge_vectors=max_magnitude,
    default_alpha=0.5,
    paper="Marczak et al. 2024, MagMax, ECCV 2024, arXiv 2407.06322",
    alpha_grid=linear_grid(0.2, 1.4, 0.2),
    alpha_bounds=(0.0, 3.0),
)
