"""Where a merge runs: ``resolve_device`` turns "auto", "cpu", "cuda", "cuda:N" into a checked torch device."""

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
