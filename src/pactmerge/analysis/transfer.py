"""Task-vector transfer: add task vectors to an encoder other than the one they came from.

``θ = θ_target + α·Σ_t τt'`` where ``τt = θt − θ0(t)`` is task t's vector against its own
pre-trained encoder, and ``τt'`` is ``τt`` itself or, with PACT, ``τt`` cleaned against the
*target's* weights as ``W0`` (the target's core is the wall the added tasks must not write
into; when the target is a merge, the tasks already in it are inside that core). Every
task vector must have exactly the target's floating-point keys and shapes; integer buffers
come from the target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from pactmerge.analysis.lbw import make_pact_config
from pactmerge.errors import ConfigError
from pactmerge.merging import KeyPolicy, TaskVector, clean_task_vectors
from pactmerge.merging.sources import require_same_layout

log = logging.getLogger(__name__)
Tensor = torch.Tensor


@dataclass
class TransferConfig:
    """``alpha`` scales the sum of the task vectors; ``pact`` cleans them against the target
    (``pact_params`` go to ``PACTConfig``); ``conv_as_matrix``/``exclude``: the merges' key policy."""

    alpha: float = 1.0
    pact: bool = False
    pact_params: dict[str, Any] = field(default_factory=dict)
    conv_as_matrix: bool = False
    exclude: tuple[str, ...] = ()


def task_vector(finetuned: Mapping[str, Tensor], pretrained: Mapping[str, Tensor], *, name: str) -> TaskVector:
    """``θt − θ0`` in float32 on the floating-point keys; key or shape differences raise ``MergeError``."""
    return TaskVector.from_state_dicts(pretrained, finetuned, name=name, pretrained_name="its pre-trained encoder")


def transfer(
    target: Mapping[str, Tensor], task_vectors: Mapping[str, Mapping[str, Tensor]], cfg: TransferConfig, *, target_name: str = "the target"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The target with the (optionally PACT-cleaned) task vectors added; returns ``(state, diagnostics)``.

    ``state`` has every key of ``target`` in its dtype; ``diagnostics`` (JSON-able) holds, with
    PACT, the share of each task vector removed per key and overall.
    """
    if not task_vectors:
        raise ConfigError("transfer needs at least one task vector (--task-vector TASK=FILE)")
    floats = {k: v for k, v in target.items() if v.is_floating_point()}
    for name, tv in task_vectors.items():
        require_same_layout(floats, tv, ref_name=target_name, other_name=f"task vector {name!r}")
    names = list(task_vectors)
    vectors = [TaskVector({k: v.detach().to(torch.float32) for k, v in task_vectors[n].items()}) for n in names]
    diagnostics: dict[str, Any] = {"alpha": cfg.alpha, "tasks": names, "pact": cfg.pact}
    if cfg.pact:
        cleaned, summary = clean_task_vectors(
            target, vectors, make_pact_config(cfg.pact_params),
            key_policy=KeyPolicy(conv_as_matrix=cfg.conv_as_matrix, exclude=tuple(cfg.exclude)), clip_ranks=True,
        )
        per_key = {key: {n: rows[i]["removed_share"] for i, n in enumerate(names)} for key, rows in summary["keys"].items()}
        before = [{k: float(v.double().square().sum()) for k, v in tv.items()} for tv in vectors]
        after = [{k: float(v.double().square().sum()) for k, v in tv.items()} for tv in cleaned]
        share = {}
        for i, n in enumerate(names):
            total = sum(before[i][k] for k in per_key)
            share[n] = sum(before[i][k] - after[i][k] for k in per_key) / total if total > 0 else 0.0
        diagnostics["removed_share"] = share
        diagnostics["removed_share_per_key"] = per_key
        vectors = cleaned
    delta = sum(vectors)
    return delta.apply_to(target, cfg.alpha), diagnostics
