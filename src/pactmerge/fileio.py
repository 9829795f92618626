"""Atomic file writes, hashing, and safe state-dict loading.

Writes go to a temporary file in the destination directory and are moved into place with
``os.replace``: a reader never sees a half-written file, and an interrupted write leaves
nothing behind at the destination.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from pactmerge.errors import CheckpointError

if TYPE_CHECKING:  # torch is imported where tensors are read or written, so JSON and text writes stay torch-free
    import torch

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON text; paths and one-element tensors or numpy scalars become plain values."""
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def write_json_atomic(path: PathLike, obj: Any) -> None:
    write_text_atomic(path, json_text(obj))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # a one-element tensor or a numpy scalar
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def save_safetensors_atomic(
    path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Save ``tensors`` (contiguous, CPU copies are made) to ``path`` atomically."""
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(flat, str(tmp), metadata=dict(metadata) if metadata else None)
        except Exception as exc:  # safetensors reports I/O failures as its own error type
            code = next((c for c in (errno.ENOSPC, errno.EDQUOT) if f"os error {c})" in str(exc)), None)
            if code is None:
                raise
            raise OSError(code, os.strerror(code), str(path)) from exc


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[PathLike], workers: int) -> dict[str, str]:
    """``{str(path): sha256_file(path)}``, up to ``workers`` files hashed side by side (hashlib and
    file reads release the GIL, so each worker keeps a core busy)."""
    paths = [str(p) for p in paths]
    if workers <= 1 or len(paths) <= 1:
        return {p: sha256_file(p) for p in paths}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(workers, len(paths)), thread_name_prefix="pactmerge-sha256") as pool:
        return dict(zip(paths, pool.map(sha256_file, paths)))


def is_safetensors(path: PathLike) -> bool:
    return Path(path).suffix == ".safetensors"


def load_state_dict(path: PathLike, *, trust_pickle: bool = False, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a state dict from a safetensors file, or a torch file with ``weights_only`` loading.

    A torch file whose loading needs arbitrary pickled objects is refused unless
    ``trust_pickle`` is true. Errors name the file and say what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=device)
        except Exception as exc:  # safetensors raises several types for bad headers
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({exc}); the file may be truncated or of another format"
            ) from exc
    import torch

    try:
        obj = torch.load(path, map_location=device, weights_only=not trust_pickle)
    except Exception as exc:
        hint = "" if trust_pickle else " If you trust its origin, pass --trust-pickle to load it as a pickle."
        raise CheckpointError(f"{path}: cannot load as a safetensors or torch weights file ({exc}).{hint}") from exc
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[str(k)] = v
    return out


# bytes per element of the safetensors dtype names
_ST_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                   "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def read_safetensors_layout(path: PathLike) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a safetensors file, from its header alone, after checking the file is complete.

    Reads only the header, so it is cheap on large files. Raises ``CheckpointError`` naming the
    file when it is missing, not safetensors, or truncated (a tensor's bytes run past the end).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    size = path.stat().st_size
    bad = f"{path}: not a readable safetensors file"
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{bad} (only {size} bytes); the file may be truncated or of another format")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise CheckpointError(f"{bad} (header length {n} exceeds the file size {size}); it may be truncated or of another format")
        try:
            header = json.loads(fh.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{bad} (header is not JSON: {exc}); it may be of another format") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{bad} (header is not a JSON object)")
    data_size = size - 8 - n
    layout: dict[str, tuple[int, ...]] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
            itemsize = _ST_DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{bad} (malformed header entry for key {key!r})") from exc
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * itemsize:
            raise CheckpointError(f"{bad} (key {key!r}: its byte range does not match its shape and dtype)")
        if end > data_size:
            raise CheckpointError(
                f"{path}: truncated safetensors file: key {key!r} needs bytes up to {end}, the file holds {data_size}; "
                "copy or write it again"
            )
        layout[key] = shape
    return layout


# -- weights with a JSON sidecar (``pactmerge merge`` and ``transfer``) ------------------------------
def sidecar_path(out: PathLike) -> Path:
    """The JSON sidecar of weights file ``out``: ``merged.safetensors`` -> ``merged.safetensors.json``."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def check_weights_destination(out: PathLike, option: str = "--out") -> None:
    """Refuse, before any work, a weights destination ``out`` (or its sidecar) that is a directory or
    other non-file, that lies under a regular file, or whose directory cannot be written
    (``ConfigError`` naming ``option`` and the path)."""
    from pactmerge.errors import ConfigError

    out = Path(out)
    side = sidecar_path(out)
    for path, what in ((out, f"{option} {out}"), (side, f"the sidecar path {side} of {option}")):
        if path.is_dir():
            raise ConfigError(f"{what}: is a directory; give the path of a file to write (remove or rename the directory)")
        if path.exists() and not path.is_file():
            raise ConfigError(f"{what}: exists and is not a regular file; choose another path")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{option} {out}: {ancestor} is a file, not a directory; choose a path inside a directory")
    try:  # a real write: permission bits say nothing for root or read-only file systems
        fd, probe = tempfile.mkstemp(prefix=".pactmerge-write-check-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"{option} {out}: cannot write in {ancestor} ({exc.strerror or exc}); choose a writable directory"
        ) from None


def write_weights_with_sidecar(out: PathLike, tensors: Mapping[str, torch.Tensor],
                               sidecar: Mapping[str, Any] | Callable[[str], Mapping[str, Any]], *,
                               metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` as safetensors to ``out`` and ``sidecar`` as JSON to ``sidecar_path(out)``; returns
    the sidecar's path. ``sidecar`` may be a function of the written weights' sha256, called once they
    are written (for the hash and timings).

    Both go to temporary files beside their destinations and are moved into place only when both
    are complete, so until then ``out`` and its sidecar keep whatever they held; a sidecar that
    cannot be serialised fails before anything is written; a write error names the path.
    """
    from safetensors.torch import save_file

    out = Path(out)
    side = sidecar_path(out)
    json_text(sidecar("0" * 64) if callable(sidecar) else sidecar)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    target = out
    try:
        with atomic_path(out) as tmp_weights, atomic_path(side) as tmp_sidecar:
            save_file(flat, str(tmp_weights), metadata=dict(metadata) if metadata else None)
            target = side
            record = sidecar(sha256_file(tmp_weights)) if callable(sidecar) else sidecar
            tmp_sidecar.write_text(json_text(record), encoding="utf-8")
            target = out
    except OSError as exc:
        where = exc.filename or target
        raise CheckpointError(
            f"{where}: cannot be written ({exc.strerror or exc}) while writing {target}; nothing was moved onto "
            f"{out} or {side} unless both were complete"
        ) from None
    return side
