"""Classification of state-dict keys into matrix, vector and integer keys.

Matrix keys are the ones the SVD-based methods and PACT decompose. By default they are the
2-D floating-point tensors (for an open_clip ViT: every packed ``in_proj_weight``,
``out_proj.weight``, ``mlp.c_fc.weight``, ``mlp.c_proj.weight``, ``positional_embedding`` and
``proj``). Convolution kernels (4-D) are vector keys unless ``conv_as_matrix`` is set, in which
case they are viewed as ``(out, in*kh*kw)``. Every other floating-point tensor is a vector key;
non-floating tensors (integer or bool buffers) are copied from the pre-trained model untouched.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Literal, Mapping, TypeVar

import torch
from torch import Tensor

KeyKind = Literal["matrix", "vector", "int"]
T = TypeVar("T")


@dataclass(frozen=True)
class KeyPolicy:
    """Which keys are matrices, and which matrices PACT touches.

    ``exclude``: fnmatch patterns; a matching matrix key is treated as a vector key.
    ``pact_include``: fnmatch patterns; PACT cleans only the matrix keys that match one.
    """

    conv_as_matrix: bool = False
    exclude: tuple[str, ...] = ()
    pact_include: tuple[str, ...] = ("*",)

    def kind(self, key: str, tensor: Any) -> KeyKind:
        """Kind of ``key``; ``tensor`` is anything with ``.shape`` and ``.dtype`` (a Tensor or TensorMeta)."""
        if not _is_float(tensor.dtype):
            return "int"
        ndim = len(tensor.shape)
        is_matrix = ndim == 2 or (ndim == 4 and self.conv_as_matrix)
        if not is_matrix or any(fnmatch.fnmatchcase(key, p) for p in self.exclude):
            return "vector"
        return "matrix"

    def pact_applies(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, p) for p in self.pact_include)


@dataclass(frozen=True)
class TensorMeta:
    """Shape and dtype of a tensor that has not been loaded (a lazily opened file)."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def _is_float(dtype: torch.dtype) -> bool:
    return bool(dtype.is_floating_point)


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The (m, n) a matrix key is decomposed as: 2-D as is, a conv kernel as (out, in*kh*kw)."""
    m = shape[0]
    n = 1
    for s in shape[1:]:
        n *= s
    return m, n


def as_matrix(t: Tensor) -> Tensor:
    """``t`` as the matrix the SVD methods and PACT decompose: 2-D as is, a conv kernel (out, in, kh, kw)
    viewed as (out, in*kh*kw) (see ``matrix_shape``)."""
    return t.reshape(matrix_shape(tuple(t.shape))) if t.dim() > 2 else t


WRAPPER_PREFIX = "module."  # DataParallel / DistributedDataParallel
TOWER_PREFIX = "visual."  # the image tower inside a whole open_clip CLIP


def normalize_keys(state: Mapping[str, T], *, tower: bool = False) -> dict[str, T]:
    """The one key-prefix normaliser: ``module.`` removed from every key; with ``tower``, when any
    key starts with ``visual.``, only those keys, with ``visual.`` removed (a whole open_clip CLIP's
    image tower). A state without those prefixes comes back as a plain copy."""
    out = {k.removeprefix(WRAPPER_PREFIX): v for k, v in state.items()}
    if tower and any(k.startswith(TOWER_PREFIX) for k in out):
        out = {k.removeprefix(TOWER_PREFIX): v for k, v in out.items() if k.startswith(TOWER_PREFIX)}
    return out


def layer_of(key: str) -> str:
    """The block a key belongs to, for per-layer summaries.

    ``transformer.resblocks.3.attn.in_proj_weight`` -> ``transformer.resblocks.3``; a key with
    no numbered component is its own layer minus a trailing ``weight``/``bias``
    (``conv1.weight`` -> ``conv1``, ``positional_embedding`` -> ``positional_embedding``).
    """
    parts = key.split(".")
    last_num = max((i for i, p in enumerate(parts) if p.isdigit()), default=-1)
    if last_num >= 0:
        return ".".join(parts[: last_num + 1])
    if len(parts) > 1 and parts[-1] in ("weight", "bias"):
        return ".".join(parts[:-1])
    return key
