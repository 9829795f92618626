"""Where a merge runs: ``resolve_device`` turns "auto", "cpu", "cuda", "cuda:N" into a checked torch device;
``return_freed_memory`` keeps a streaming merge's host memory at what it holds."""

from __future__ import annotations

import torch

from pactmerge.errors import MergeError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``device``: ``"auto"`` is CUDA when available, else the CPU.

    ``MergeError`` for a string that is not a torch device, or for CUDA asked for without CUDA.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise MergeError(f"device {device!r} is not a torch device; use 'auto', 'cpu' or 'cuda'") from exc
    if dev.type not in ("cpu", "cuda"):
        raise MergeError(f"device {device!r}: merges run on 'cpu' or 'cuda' (or 'auto'), not {dev.type!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MergeError(f"device {device!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MergeError(
                f"device {device!r}: there are only {torch.cuda.device_count()} CUDA device(s); use 'cuda' or 'cuda:0'"
            )
    return dev


_TRIM = None  # glibc's malloc_trim once looked up; False where there is none


def return_freed_memory() -> None:
    """Hand memory freed by the last batch back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    Tensors below glibc's mmap threshold (which grows up to 32 MiB as large blocks are freed) live
    in malloc arenas, one per worker thread, and freed space there stays resident: without this
    the peak RSS of a streaming merge grew with the arenas, not with what it holds."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)

