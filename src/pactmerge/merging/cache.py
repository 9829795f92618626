"""PACT's cleaned task vectors, computed once and shared by every ``pact+`` merge of the same inputs.

A study's merge stage runs ``pact+ta``, ``pact+ties``, ``pact+tsvm``, ... on the same
checkpoints with the same PACT parameters; PACT's output (the cleaned task vectors of every
matrix key PACT touches) is the same for all of them. ``PACTCache`` keeps it:

    cache = PACTCache(max_bytes=2 << 30)
    for method in ("pact+ties", "pact+tsvm", "pact+iso_c"):
        merge_files(pre, fts, method, pact=pact, pact_cache=cache)

Entries are keyed by a signature of everything PACT's result depends on: the inputs (files by
resolved path, size and modification time; in-memory state dicts by identity and the tensors'
version counters, the cache holding a reference to them), their order and task identities, the
PACT configuration, the SVD options, the key policy, the compute dtype, the device and the
batch budget. A hit returns the very tensors a computation would produce (they are stored as
computed, on the CPU), so a merge with the cache is bitwise identical to one without.

Memory is bounded by ``max_bytes`` of stored tensors: keys that do not fit are not stored and
are recomputed when asked for again. ``stats`` counts computed and served keys.
"""

from __future__ import annotations

import logging
from typing import Any, Hashable, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

DEFAULT_BYTES = 2 << 30


class PACTCache:
    """A bounded store of PACT-cleaned task vectors, shared across merges (see the module docstring)."""

    def __init__(self, max_bytes: int = DEFAULT_BYTES):
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"PACTCache: max_bytes must be a non-negative integer, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: dict[Hashable, dict[str, tuple[Tensor, list[dict]]]] = {}
        self._pins: dict[Hashable, Any] = {}
        self.bytes = 0
        self.stats = {"computed_keys": 0, "served_keys": 0, "skipped_keys": 0}

    def get(self, signature: Hashable, keys: Sequence[str], device: torch.device) -> tuple[Tensor, list[list[dict]]] | None:
        """(cleaned (T, B, m, n) on ``device``, diagnostics per key) if every key is stored, else None."""
        entry = self._entries.get(signature)
        if entry is None or any(k not in entry for k in keys):
            return None
        self.stats["served_keys"] += len(keys)
        taus = torch.stack([entry[k][0] for k in keys], dim=1).to(device)
        return taus, [entry[k][1] for k in keys]

    def put(self, signature: Hashable, keys: Sequence[str], taus: Tensor, diags: list[list[dict]], pin: Any = None) -> None:
        """Store the cleaned ``taus`` (T, B, m, n) of ``keys`` while they fit in ``max_bytes``."""
        self.stats["computed_keys"] += len(keys)
        entry = self._entries.setdefault(signature, {})
        if pin is not None:
            self._pins[signature] = pin
        for b, key in enumerate(keys):
            if key in entry:
                continue
            size = taus[:, b].numel() * taus.element_size()
            if self.bytes + size > self.max_bytes:
                self.stats["skipped_keys"] += 1
                continue
            entry[key] = (taus[:, b].to("cpu", copy=True), diags[b])
            self.bytes += size

    def clear(self) -> None:
        """Drop every entry (and the references to in-memory inputs)."""
        self._entries.clear()
        self._pins.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return sum(len(e) for e in self._entries.values())

    def __repr__(self) -> str:
        return f"PACTCache({len(self)} keys, {self.bytes / 2**20:.1f} MiB of {self.max_bytes / 2**20:.0f} MiB)"
