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

from pactmerge.errors import ConfigError, MergeError
from pactmerge.interop.files import require_same_layout

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


def task_vector(finetuned: Mapping[str, Tensor], pretrained: Mapping[str, Tensor], *, name: str) -> dict[str, Tensor]:
    """``θt − θ0`` in float32 on the floating-point keys; key or shape differences raise ``MergeError``."""
    require_same_layout(pretrained, finetuned, ref_name="its pre-trained encoder", other_name=name, error=MergeError)
    return {
        k: finetuned[k].detach().to(torch.float32) - v.detach().to(torch.float32)
        for k, v in pretrained.items()
        if v.is_floating_point()
    }


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
        require_same_layout(floats, tv, ref_name=target_name, other_name=f"task vector {name!r}", error=MergeError)
    names = list(task_vectors)
    matrix_keys: set[str] = set()
    if cfg.pact:
        from pactmerge.merging import KeyPolicy

        policy = KeyPolicy(conv_as_matrix=cfg.conv_as_matrix, exclude=tuple(cfg.exclude))
        matrix_keys = {k for k, v in floats.items() if policy.kind(k, v) == "matrix"}
    removed = {n: 0.0 for n in names}
    total = {n: 0.0 for n in names}
    per_key: dict[str, dict[str, float]] = {}
    out: dict[str, Tensor] = {}
    for key, w in target.items():
        if not w.is_floating_point():
            out[key] = w.clone()
            continue
        taus = [task_vectors[n][key].detach().to(torch.float64) for n in names]
        if key in matrix_keys:
            cleaned = _pact(w, taus, cfg, key)
            per_key[key] = {}
            for n, before, after in zip(names, taus, cleaned):
                b, a = float(before.square().sum()), float(after.square().sum())
                total[n] += b
                removed[n] += b - a
                per_key[key][n] = (b - a) / b if b > 0 else 0.0
            taus = cleaned
        delta = torch.stack(taus).sum(0) if len(taus) > 1 else taus[0]
        out[key] = (w.detach().to(torch.float64) + cfg.alpha * delta).to(w.dtype)
    diagnostics: dict[str, Any] = {"alpha": cfg.alpha, "tasks": names, "pact": cfg.pact}
    if cfg.pact:
        diagnostics["removed_share"] = {n: (removed[n] / total[n] if total[n] > 0 else 0.0) for n in names}
        diagnostics["removed_share_per_key"] = per_key
    return out, diagnostics


def _pact(w0: Tensor, taus: list[Tensor], cfg: TransferConfig, key: str) -> list[Tensor]:
    from pactmerge.analysis.lbw import make_pact_config
    from pactmerge.merging import pact_filter

    shape = w0.shape
    # convolution kernels viewed as (out, in·kh·kw), as the merges do
    w0m = w0.detach().to(torch.float64).reshape(shape[0], -1)
    cleaned, _ = pact_filter(w0m, [t.reshape(shape[0], -1) for t in taus], make_pact_config(cfg.pact_params, tuple(w0m.shape)), key)
    return [c.to(torch.float64).reshape(shape) for c in cleaned]
