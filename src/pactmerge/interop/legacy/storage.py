"""The two on-disk formats of ``torch.save``, read through the restricted unpickler.

* the zip archive of torch >= 1.6: ``<name>/data.pkl`` + ``<name>/data/<key>`` storages (read in
  place, one copy of the weights in memory, sizes checked against the pickle);
* the single stream of torch < 1.6: magic number, protocol, system info, the object, the storage
  keys, then each storage's raw bytes.

Both return ``(object, Counter of the globals the pickle named)``.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from pactmerge.errors import CheckpointError
from pactmerge.interop.legacy.unpickler import RestrictedUnpickler

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _dtype_of(storage_type: Any, source: str) -> torch.dtype:
    if storage_type is torch.UntypedStorage:
        return torch.uint8
    dtype = getattr(storage_type, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"{source}: unknown storage type {storage_type!r} in the pickle")
    return dtype


def _typed(data: torch.UntypedStorage, dtype: torch.dtype) -> Any:
    return torch.storage.TypedStorage(wrap_storage=data, dtype=dtype, _internal=True)


def _bytes_storage(raw: bytes | bytearray) -> torch.UntypedStorage:
    if not raw:
        return torch.UntypedStorage(0)
    return torch.frombuffer(raw if isinstance(raw, bytearray) else bytearray(raw), dtype=torch.uint8).untyped_storage()


def load_zip(path: Path, source: str) -> tuple[Any, Counter]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise CheckpointError(f"{source}: a zip file without a torch data.pkl; not a torch.save archive")
        prefix = pkl[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").decode().strip() != "little":
            raise CheckpointError(f"{source}: saved on a big-endian machine; convert it there to safetensors first")
        cache: dict[str, Any] = {}

        def storage(pid: tuple) -> Any:
            _, storage_type, key, _location, numel = pid[:5]
            dtype = _dtype_of(storage_type, source)
            if key not in cache:
                try:
                    info = zf.getinfo(f"{prefix}data/{key}")
                except KeyError:
                    raise CheckpointError(f"{source}: storage {key!r} is missing from the archive; the file is "
                                          "truncated or damaged") from None
                raw = bytearray(info.file_size)  # read in place: one copy of the weights in memory
                view, got = memoryview(raw), 0
                with zf.open(info) as member:
                    while got < len(raw) and (n := member.readinto(view[got:])):
                        got += n
                need = numel * torch._utils._element_size(dtype)
                if got != need or len(raw) != need:
                    raise CheckpointError(f"{source}: storage {key!r} holds {len(raw)} bytes, {need} expected; "
                                          "the file is truncated or damaged")
                cache[key] = _bytes_storage(raw)
            return _typed(cache[key], dtype)

        unpickler = RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), source=source, storage=storage)
        return unpickler.load(), unpickler.seen


def load_stream(path: Path, source: str) -> tuple[Any, Counter]:
    """The single-stream format of torch < 1.6: magic, protocol, sys info, object, storage keys, raw storages."""
    with open(path, "rb") as fh:
        def plain() -> Any:
            return RestrictedUnpickler(fh, source=source, storage=None).load()

        try:
            magic = plain()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise CheckpointError(f"{source}: neither a torch zip archive nor a torch pickle ({exc})") from exc
        if magic != _LEGACY_MAGIC:
            raise CheckpointError(f"{source}: a pickle, but not one written by torch.save (no torch magic number)")
        protocol, sys_info = plain(), plain()
        if protocol != 1001 or not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
            raise CheckpointError(f"{source}: unsupported torch.save stream (protocol {protocol!r}, {sys_info!r})")
        storages: dict[str, tuple[torch.UntypedStorage, torch.dtype]] = {}

        def storage(pid: tuple) -> Any:
            _, storage_type, key, _location, numel, view = pid[:6]
            dtype = _dtype_of(storage_type, source)
            if key not in storages:
                storages[key] = (torch.UntypedStorage(numel * torch._utils._element_size(dtype)), dtype)
            if view is not None:
                raise CheckpointError(f"{source}: storage views of torch < 0.4 are not supported; re-save the file")
            return _typed(storages[key][0], dtype)

        unpickler = RestrictedUnpickler(fh, source=source, storage=storage)
        obj = unpickler.load()
        keys = plain()
        for key in keys:
            data, dtype = storages[key]
            head = fh.read(8)
            size = torch._utils._element_size(dtype)
            numel = int.from_bytes(head, "little") if len(head) == 8 else -1
            raw = fh.read(max(numel, 0) * size)
            if numel * size != data.nbytes() or len(raw) != data.nbytes():
                raise CheckpointError(f"{source}: storage {key!r} is truncated or damaged")
            data.copy_(_bytes_storage(raw))
        return obj, unpickler.seen
