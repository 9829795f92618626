"""pactmerge.merging: task vectors and merge methods (TA, TIES, TSV-M, Iso-C, Iso-CTS, DARE, Breadcrumbs,
Consensus, MagMax, PACT), pure torch.

    res = merge(pretrained_sd, [ft_1, ..., ft_T], "pact+tsvm", pact={"K": 15, "k": 8})
    merged_sd = res.apply(pretrained_sd, alpha)
"""

from pactmerge.merging.cache import PACTCache
from pactmerge.merging.engine import MergeResult, merge, merge_files, resolve_device
from pactmerge.merging.keys import KeyPolicy, as_matrix, layer_of, normalize_keys
from pactmerge.merging.linalg import orth, randomized_svd
from pactmerge.merging.pact import PACTConfig, clean_task_vectors, intrusion_energy, pact_filter
from pactmerge.merging.params import SVDOptions
from pactmerge.merging.registry import alpha_grid, available_methods, get_method
from pactmerge.merging.spec import MethodSpec
from pactmerge.merging.task_vector import TaskVector, apply_task_vector

__all__ = [
    "KeyPolicy",
    "MergeResult",
    "MethodSpec",
    "PACTCache",
    "PACTConfig",
    "SVDOptions",
    "TaskVector",
    "alpha_grid",
    "apply_task_vector",
    "as_matrix",
    "available_methods",
    "clean_task_vectors",
    "get_method",
    "intrusion_energy",
    "layer_of",
    "merge",
    "merge_files",
    "normalize_keys",
    "orth",
    "pact_filter",
    "randomized_svd",
    "resolve_device",
]
