"""Diagnostics of task vectors against the pre-trained "load-bearing wall" (intrusion energy,
task-core similarity, interference, the perturbation view) and task-vector transfer."""

from pactmerge.analysis.lbw import LBWConfig, analyze_states, block_of, component_of
from pactmerge.analysis.perturb import PerturbConfig, lbw_mask, perturbation_curves, perturbed_state, random_mask
from pactmerge.analysis.transfer import TransferConfig, task_vector, transfer

__all__ = [
    "LBWConfig",
    "PerturbConfig",
    "TransferConfig",
    "analyze_states",
    "block_of",
    "component_of",
    "lbw_mask",
    "perturbation_curves",
    "perturbed_state",
    "random_mask",
    "task_vector",
    "transfer",
]
