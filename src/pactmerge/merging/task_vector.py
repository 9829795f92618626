"""Task vectors as values: ``tau = theta_ft - theta_0`` per floating-point key.

``TaskVector`` supports ``+``, ``-``, unary ``-``, scaling by a number and ``sum()``, so a
merge reads like the paper: ``(0.3 * sum(tvs)).apply_to(pretrained)``. Integer buffers are
not part of a task vector; ``apply_to`` copies them from the pre-trained model untouched.
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping

import torch
from torch import Tensor

from pactmerge.errors import MergeError
from pactmerge.merging.sources import DictSource, check_finite, require_same_layout, validate_sources


class TaskVector(Mapping[str, Tensor]):
    """An immutable mapping key -> float32 tensor (CPU), closed under linear combinations."""

    def __init__(self, vector: Mapping[str, Tensor]):
        self._v = {k: v.detach() for k, v in vector.items()}

    @classmethod
    def from_state_dicts(
        cls,
        pretrained: Mapping[str, Tensor],
        finetuned: Mapping[str, Tensor],
        *,
        name: str = "the fine-tuned model",
        pretrained_name: str = "the pre-trained model",
    ) -> "TaskVector":
        """``finetuned - pretrained`` in float32 for every floating-point key (integer buffers skipped).

        A key or shape difference is a ``MergeError`` naming every differing key and both models
        (``name``, ``pretrained_name``); so is a NaN/Inf or a float key that is an integer in the other.
        """
        require_same_layout(pretrained, finetuned, ref_name=pretrained_name, other_name=name)
        pre, ft = DictSource(pretrained, pretrained_name), DictSource(finetuned, name)
        validate_sources(pre, [ft])
        out = {}
        for key, base in pretrained.items():
            if not base.dtype.is_floating_point:
                continue
            check_finite(base, key, pre.name)
            check_finite(finetuned[key], key, ft.name)
            out[key] = finetuned[key].to(torch.float32) - base.to(torch.float32)
        return cls(out)

    def __getitem__(self, key: str) -> Tensor:
        return self._v[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._v)

    def __len__(self) -> int:
        return len(self._v)

    def _combine(self, other: "TaskVector", op) -> "TaskVector":
        if not isinstance(other, TaskVector):
            return NotImplemented
        if set(self._v) != set(other._v):
            diff = sorted(set(self._v) ^ set(other._v))
            raise MergeError(f"task vectors have different keys (e.g. {diff[0]!r}); they come from different models")
        return TaskVector({k: op(v, other._v[k]) for k, v in self._v.items()})

    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:  # so that sum() works
            return self
        return self._combine(other, torch.add)

    __radd__ = __add__

    def __sub__(self, other):
        return self._combine(other, torch.sub)

    def __neg__(self) -> "TaskVector":
        return TaskVector({k: -v for k, v in self._v.items()})

    def __mul__(self, scalar):
        if not isinstance(scalar, (int, float)):
            return NotImplemented
        return TaskVector({k: v * scalar for k, v in self._v.items()})

    __rmul__ = __mul__

    def to_dict(self) -> dict[str, Tensor]:
        """A plain ``{key: tensor}`` dict (the tensors are shared, not copied)."""
        return dict(self._v)

    def norm(self) -> float:
        """Frobenius norm over all keys."""
        return math.sqrt(sum(float(v.double().pow(2).sum()) for v in self._v.values()))

    def apply_to(self, pretrained: Mapping[str, Tensor], alpha: float = 1.0) -> dict[str, Tensor]:
        """``theta0 + alpha * tau`` with ``theta0``'s dtypes; see ``apply_task_vector``."""
        return apply_task_vector(pretrained, self._v, alpha)

    def __repr__(self) -> str:
        return f"TaskVector({len(self._v)} keys, norm={self.norm():.4g})"


def apply_task_vector(pretrained: Mapping[str, Tensor], tau: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``theta0 + alpha * tau`` per key, computed in (at least) float32 and cast back to ``theta0``'s dtype.

    Integer buffers are copied from ``theta0`` untouched. A floating-point
    key of ``pretrained`` missing from ``tau`` (or a ``tau`` key missing from ``pretrained``) is
    a ``MergeError``.
    """
    extra = [k for k in tau if k not in pretrained]
    if extra:
        raise MergeError(f"the task vector has key {extra[0]!r}, which the pre-trained model lacks")
    out = {}
    for key, base in pretrained.items():
        if not base.dtype.is_floating_point:
            out[key] = base.clone()
            continue
        if key not in tau:
            raise MergeError(f"key {key!r} of the pre-trained model has no task vector entry; wrong model?")
        work = torch.promote_types(base.dtype, torch.float32)
        delta = tau[key].to(device=base.device, dtype=work)
        out[key] = (base.to(work) + alpha * delta).to(base.dtype)
    return out
