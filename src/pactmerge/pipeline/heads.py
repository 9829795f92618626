"""Frozen classification heads: one ``(C, D)`` float32 matrix of unit rows per task.

``logits = logit_scale * normalize(features) @ head.T``.

With a pre-trained text tower the head is CLIP's zero-shot head, built by open_clip's own
``build_zero_shot_classifier`` (per class the mean of the L2-normalised template embeddings,
renormalised). With a random text tower (the offline default ``efficientnet_lite0_clip``)
text embeddings carry no meaning, so the head is a fixed deterministic one instead: ``C``
orthonormal class vectors in ``R^D`` drawn from a Gaussian seeded by the task key (QR of a
``D x C`` Gaussian), identical on every machine and run. The encoder then learns to map each
class onto its vector; zero-shot accuracy with such a head is chance level by construction.
``ModelSpec.heads`` overrides the choice: ``"text"`` builds text heads from a random tower too
(a real architecture run end to end without weights), ``"orthonormal"`` never uses the text.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F

from pactmerge.errors import ConfigError

if TYPE_CHECKING:
    from pactmerge.pipeline.model import LoadedModel

log = logging.getLogger(__name__)


def task_seed(task: str) -> int:
    """A stable 63-bit seed from the task key (no dependence on Python's hash randomisation)."""
    return int.from_bytes(hashlib.sha256(task.encode("utf-8")).digest()[:8], "big") & ((1 << 63) - 1)


def orthonormal_head(task: str, num_classes: int, dim: int) -> torch.Tensor:
    """Deterministic ``(num_classes, dim)`` float32 head with orthonormal rows, seeded by ``task``."""
    if num_classes > dim:
        raise ConfigError(f"task {task!r}: {num_classes} classes do not fit orthonormal vectors in {dim} dimensions")
    gen = torch.Generator().manual_seed(task_seed(task))
    gauss = torch.randn(dim, num_classes, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)  # (D, C), columns orthonormal
    q = q * torch.sign(torch.diagonal(r))  # fix QR's sign ambiguity so the result is unique
    return q.T.contiguous().float()


def build_heads(loaded: "LoadedModel", tasks: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Heads for ``tasks`` (``TaskInfo``: ``key``, ``classnames``, ``templates``), keyed by task key.

    Text heads when ``loaded.text_heads``, otherwise ``orthonormal_head`` (module docstring).
    """
    heads = {}
    for info in tasks:
        head = loaded.build_text_head(info.classnames, info.templates) if loaded.text_heads else None
        if head is None:
            head = orthonormal_head(info.key, len(info.classnames), loaded.embed_dim)
        heads[info.key] = check_head(info.key, head, len(info.classnames), loaded.embed_dim)
    if loaded.text_heads:
        kind = "zero-shot text" if loaded.text_pretrained else "text (from a random text tower)"
    else:
        kind = "deterministic orthonormal"
    log.info("built %s heads for %s", kind, ", ".join(heads))
    return heads


def check_head(task: str, head: torch.Tensor, num_classes: int, dim: int) -> torch.Tensor:
    """Return ``head`` as float32 after checking it is ``(num_classes, dim)`` and finite."""
    if head.ndim != 2 or tuple(head.shape) != (num_classes, dim):
        raise ConfigError(
            f"head for task {task!r} has shape {tuple(head.shape)} but the task has {num_classes} classes and the "
            f"encoder {dim} features: expected ({num_classes}, {dim}); rebuild the heads for this model and task")
    if not torch.isfinite(head).all():
        raise ConfigError(f"head for task {task!r} holds NaN or infinite values; rebuild it")
    return head.detach().float()


def head_logits(features: torch.Tensor, head: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``(B, D)`` features, ``(C, D)`` head -> ``(B, C)`` logits of the normalised features."""
    return logit_scale * F.normalize(features, dim=-1) @ head.to(features.dtype).T
