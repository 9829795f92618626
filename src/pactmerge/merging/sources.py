"""State sources: the models a merge reads, key by key, from memory or from lazily opened files.

A source lists its keys with shape and dtype without loading anything, and loads one tensor
on request. A ``FileSource`` over a safetensors file parses the header and reads one tensor
at a time, so a streaming merge holds one batch of keys of each model at a time. Non-safetensors files are loaded
whole with ``pactmerge.fileio.load_state_dict`` (``weights_only`` torch loading).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor

from pactmerge.errors import CheckpointError, MergeError
from pactmerge.merging.keys import TensorMeta

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}

# What a merge does with each dtype, the same for files and in-memory state dicts:
# these floating dtypes are merged (computed in float32/float64, cast back by ``apply``);
# integer and bool tensors (uint16/32/64 included) are buffers copied from theta0 untouched;
# anything else (float8, complex, ...) is refused with a message naming the key and the model.
MERGEABLE_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def dtype_role(dtype: torch.dtype) -> str:
    """"float" (merged), "int" (copied from theta0) or "unsupported" (refused)."""
    if dtype in MERGEABLE_FLOATS:
        return "float"
    if dtype.is_floating_point or dtype.is_complex:
        return "unsupported"
    return "int"


class DictSource:
    """A source over an in-memory state dict; ``name`` is how messages refer to it."""

    def __init__(self, state: Mapping[str, Tensor], name: str, identity: tuple | None = None):
        self.name = name
        self._state = state
        self._identity = identity
        for key, value in state.items():
            if not isinstance(value, Tensor):
                raise MergeError(f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor")

    def keys(self) -> list[str]:
        return list(self._state.keys())

    def meta(self, key: str) -> TensorMeta:
        t = self._state[key]
        return TensorMeta(tuple(t.shape), t.dtype)

    def get(self, key: str) -> Tensor:
        return self._state[key]

    def identity(self) -> tuple:
        """What a cache may key this source by: its file when it was loaded from one, else the
        mapping's identity and its tensors' version counters (an in-place change alters them)."""
        if self._identity is not None:
            return self._identity
        return ("memory", id(self._state), sum(t._version for t in self._state.values()))


class FileSource:
    """A source over a safetensors file read lazily: the header once, then one tensor per ``get``.

    Tensors are read with plain positioned reads rather than through a memory map, so pages of
    keys already merged do not stay resident: peak memory is what the merge holds, not the files.
    """

    def __init__(self, path: str | os.PathLike, name: str):
        self.path = Path(path)
        self.name = name
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such file")
        size = self.path.stat().st_size
        try:
            with open(self.path, "rb") as fh:
                (header_len,) = struct.unpack("<Q", fh.read(8))
                if header_len > size - 8:
                    raise ValueError("header longer than the file")
                header = json.loads(fh.read(header_len))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            self._data_start = 8 + header_len
            self._entries = {}
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
                    raise ValueError(f"key {key!r} has a malformed entry {info!r}")
                offsets, raw_shape = info["data_offsets"], info["shape"]
                if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
                    raise ValueError(f"key {key!r} has malformed data_offsets {offsets!r}")
                begin, end = offsets
                if not isinstance(raw_shape, list) or not all(type(d) is int for d in raw_shape):
                    raise ValueError(f"key {key!r} has a malformed shape {raw_shape!r}")
                if any(d < 0 for d in raw_shape):
                    raise ValueError(f"key {key!r} has a negative dimension in its shape {raw_shape}")
                dtype = _ST_DTYPES.get(info["dtype"])
                if dtype is None:
                    raise CheckpointError(
                        f"{self.path}: key {key!r} has dtype {info['dtype']!r}, which pactmerge does not read; "
                        "convert the checkpoint to float32 / bfloat16 / float16"
                    )
                shape = tuple(raw_shape)
                numel = 1
                for d in shape:
                    numel *= d
                if not 0 <= begin <= end or end - begin != numel * dtype.itemsize or self._data_start + end > size:
                    raise ValueError(f"key {key!r} lies outside the file or has the wrong size")
                self._entries[key] = (TensorMeta(shape, dtype), begin, end)
        except CheckpointError:
            raise
        except Exception as exc:  # bad header, bad JSON, short file
            raise CheckpointError(
                f"{self.path}: not a readable safetensors file ({exc}); the file may be truncated or of another format"
            ) from exc

    def keys(self) -> list[str]:
        return list(self._entries)

    def identity(self) -> tuple:
        """The file by resolved path, size and modification time (what a cache may key it by)."""
        return file_identity(self.path)

    def meta(self, key: str) -> TensorMeta:
        return self._entries[key][0]

    def get(self, key: str) -> Tensor:
        meta, begin, end = self._entries[key]
        buf = bytearray(end - begin)
        with open(self.path, "rb") as fh:
            fh.seek(self._data_start + begin)
            if fh.readinto(buf) != len(buf):
                raise CheckpointError(f"{self.path}: cannot read key {key!r}; the file is truncated")
        if not buf:
            return torch.empty(meta.shape, dtype=meta.dtype)
        return torch.frombuffer(buf, dtype=meta.dtype).reshape(meta.shape)


def file_identity(path: str | os.PathLike) -> tuple:
    st = os.stat(path)
    return ("file", str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def open_source(path: str | os.PathLike, name: str) -> DictSource | FileSource:
    """A lazy source for a safetensors file, an in-memory one for a torch weights file."""
    from pactmerge.fileio import is_safetensors, load_state_dict

    if is_safetensors(path):
        return FileSource(path, name)
    return DictSource(load_state_dict(path), name, identity=file_identity(path))


def layout_differences(reference: Mapping[str, Tensor], other: Mapping[str, Tensor], *, limit: int = 8) -> list[str]:
    """Human-readable differences between two states' key sets and shapes (empty when they match)."""
    missing = sorted(set(reference) - set(other))
    extra = sorted(set(other) - set(reference))
    shapes = sorted(k for k in set(other) & set(reference) if tuple(other[k].shape) != tuple(reference[k].shape))

    def cut(keys: list[str]) -> str:
        return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {cut(missing)}")
    if extra:
        parts.append(f"unexpected keys: {cut(extra)}")
    if shapes:
        parts.append(
            "different shapes: "
            + cut([f"{k} {tuple(other[k].shape)} instead of {tuple(reference[k].shape)}" for k in shapes])
        )
    return parts


def require_same_layout(
    reference: Mapping[str, Tensor], other: Mapping[str, Tensor], *, ref_name: str, other_name: str, error=MergeError
) -> None:
    """Raise ``error`` naming every differing key when ``other`` lacks ``reference``'s keys and shapes
    (the check for two in-memory states; ``validate_sources`` is the merge's, over sources)."""
    parts = layout_differences(reference, other)
    if parts:
        raise error(
            f"{other_name} does not match {ref_name} ({'; '.join(parts)}); the models must share one architecture and size"
        )


def validate_sources(pretrained, finetuned: Sequence) -> None:
    """Every fine-tuned model has exactly the pre-trained keys with the same shapes.

    Errors name the key and the model (its file, or its index in the list).
    """
    if len(finetuned) == 0:
        raise MergeError("no fine-tuned models given: a merge needs at least one")
    ref_keys = pretrained.keys()
    for key in ref_keys:
        if dtype_role(pretrained.meta(key).dtype) == "unsupported":
            raise MergeError(_unsupported(key, pretrained.meta(key).dtype, pretrained.name))
    ref = set(ref_keys)
    for src in finetuned:
        keys = set(src.keys())
        missing = [k for k in ref_keys if k not in keys]
        if missing:
            raise MergeError(
                f"key {missing[0]!r} is missing from {src.name} ({len(missing)} key(s) missing); "
                "all models must be the same architecture"
            )
        extra = sorted(keys - ref)
        if extra:
            raise MergeError(f"{src.name} has key {extra[0]!r}, which {pretrained.name} lacks; all models must match")
        for key in ref_keys:
            ma, mb = pretrained.meta(key), src.meta(key)
            if ma.shape != mb.shape:
                raise MergeError(
                    f"key {key!r} has shape {list(mb.shape)} in {src.name} but {list(ma.shape)} in {pretrained.name}"
                )
            ra, rb = dtype_role(ma.dtype), dtype_role(mb.dtype)
            if rb == "unsupported":
                raise MergeError(_unsupported(key, mb.dtype, src.name))
            if ra != rb:
                raise MergeError(
                    f"key {key!r} is {_dtype_name(mb.dtype)} in {src.name} but {_dtype_name(ma.dtype)} in "
                    f"{pretrained.name}: a fine-tuned model must keep the pre-trained model's floating-point and "
                    "integer tensors as such (wrong or corrupt checkpoint?)"
                )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _unsupported(key: str, dtype: torch.dtype, name: str) -> str:
    return (
        f"key {key!r} of {name} has dtype {_dtype_name(dtype)}, which pactmerge does not merge "
        "(it merges float16, bfloat16, float32 and float64 tensors and copies integer buffers); "
        "convert the checkpoint, e.g. to float32 or bfloat16"
    )


def check_finite(tensor: Tensor, key: str, source_name: str) -> None:
    if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
        raise MergeError(f"key {key!r} of {source_name} contains NaN or Inf values; the checkpoint is corrupt")


_FINGERPRINT_KEYS = 4


def fingerprint(source) -> str:
    """A content fingerprint of a model: blake2b over the names, dtypes, shapes and bytes of its
    ``_FINGERPRINT_KEYS`` largest floating-point tensors (ties broken by name), 16 hex digits.

    Cheap (a few tensors are read, whatever the model's size) and independent of where the
    model comes from (file or memory) or of its position in a merge's list. It serves as a
    task's identity for seeding randomized SVDs; two models equal on those tensors share it,
    which only means their test matrices are drawn alike.
    """
    import hashlib

    floats = [k for k in source.keys() if source.meta(k).dtype.is_floating_point]
    sizes = {k: _numel(source.meta(k).shape) for k in floats}
    chosen = sorted(floats, key=lambda k: (-sizes[k], k))[:_FINGERPRINT_KEYS]
    h = hashlib.blake2b(digest_size=8)
    for key in sorted(chosen):
        t = source.get(key).detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
