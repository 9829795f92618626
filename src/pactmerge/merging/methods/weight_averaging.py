"""Weight averaging: ``theta* = mean_t(theta_t)``, i.e. ``tau* = mean_t(tau_t)`` on every key, alpha 1.

Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models improves
accuracy without increasing inference time" (ICML 2022, arXiv 2203.05482).
"""

from __future__ import annotations

from dataclasses import dataclass

from pactmerge.merging.params import SVDOptions
from pactmerge.merging.spec import MethodSpec, mean_of_tasks


@dataclass(frozen=True)
class Params(SVDOptions):
    """No hyper-parameters of its own (the SVD options only matter under ``pact+``)."""


SPEC = MethodSpec(
    name="weight_averaging",
    params_cls=Params,
    merge_matrices=mean_of_tasks,
    merge_vectors=mean_of_tasks,
    default_alpha=1.0,
    paper="Wortsman et al. 2022, Model soups, arXiv 2203.05482",
    alpha_grid=(1.0,),
    alpha_bounds=(1.0, 1.0),
)
