"""Pre-decoded split caches: one uint8 memmap file per split, built once and reused by every process.

Layout, under ``<cache_dir>/<task>/``: ``<split>-<key>.u8`` (raw uint8, shape (N, S, S, 3): HWC rows,
which the CPU crop-and-resize reads as channels-last without a transpose),
``<split>-<key>.labels.npy`` and ``<split>-<key>.json`` (the header). ``key`` hashes the content
description (task, source, split, source indices, image size, seed, count, layout). Each file is
written to a temporary name and renamed when complete; the header is written last and is the
commit marker, so an interrupted build leaves no header and is rebuilt, never read. Every finished
build appends one line to ``<cache_dir>/builds.jsonl``. The header also records
``content_sha256``, the sha256 of the decoded pixels and labels (``content_hash``): the data's
fingerprint in a result's provenance (a cache built before it existed gets it on first open).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pactmerge.datamodules.image_datasets import DecodedDataset
from pactmerge.fileio import atomic_path, write_json_atomic

log = logging.getLogger(__name__)
FORMAT = 2  # 2: HWC rows (1 was CHW)


def describe(task: str, source: str, role: str, source_split: str, indices: np.ndarray, size: int, seed: int) -> dict:
    """The content description of one cached split; its hash names the files."""
    meta = {
        "format": FORMAT, "task": task, "source": source, "split": role, "source_split": source_split,
        "indices_sha256": hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest(),
        "image_size": int(size), "seed": int(seed), "count": int(len(indices)), "layout": "N,H,W,3 uint8",
    }
    meta["key"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    return meta


def paths(cache_dir: str | Path, meta: dict) -> tuple[Path, Path, Path]:
    stem = Path(cache_dir) / meta["task"] / f"{meta['split']}-{meta['key']}"
    return stem.with_suffix(".u8"), stem.with_suffix(".labels.npy"), stem.with_suffix(".json")


def content_hash(images: str | Path, labels: np.ndarray) -> str:
    """sha256 of a cached split's content: the raw uint8 pixel file, then the int64 labels."""
    h = hashlib.sha256()
    with open(images, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def read_header(cache_dir: str | Path, meta: dict) -> dict | None:
    """The stored header of the cache described by ``meta`` (None when absent or unreadable)."""
    header = paths(cache_dir, meta)[2]
    try:
        return json.loads(header.read_text())
    except (OSError, ValueError):
        return None


def open_cache(cache_dir: str | Path, meta: dict) -> tuple[Path, np.ndarray] | None:
    """(images path, labels) of a complete cache matching ``meta``; None when absent or incomplete."""
    images, labels, header = paths(cache_dir, meta)
    if not header.is_file():
        return None
    try:
        stored = json.loads(header.read_text())
        lab = np.load(labels)
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable cache %s: %s", header, exc)
        return None
    n, s = meta["count"], meta["image_size"]
    ok = (
        {k: stored.get(k) for k in meta} == meta
        and images.is_file() and images.stat().st_size == n * 3 * s * s
        and lab.shape == (n,)
    )
    if not ok:
        log.warning("ignoring incomplete or mismatched cache %s; it will be rebuilt", header)
        return None
    if "content_sha256" not in stored:  # built before fingerprints were recorded
        write_json_atomic(header, {**stored, "content_sha256": content_hash(images, lab)})
    return images, lab


def build_cache(cache_dir: str | Path, meta: dict, source: DecodedDataset, num_workers: int = 0,
                batch_size: int = 256) -> tuple[Path, np.ndarray]:
    """Decode ``source`` (uint8 (3, S, S) samples, any strides) into the cache files described by ``meta``."""
    images, labels, header = paths(cache_dir, meta)
    n, s = meta["count"], meta["image_size"]
    assert len(source) == n, (len(source), n)
    t0 = time.perf_counter()
    log.debug("building %s cache of %s (%d images at %dx%d) in %s", meta["split"], meta["task"], n, s, s, images.parent)
    all_labels = np.empty(n, dtype=np.int64)
    with atomic_path(images) as tmp:
        out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(n, s, s, 3)) if n else None
        loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=_stack)
        pos = 0
        for block, lab in loader:
            out[pos: pos + len(block)] = block.numpy()
            all_labels[pos: pos + len(block)] = lab.numpy()
            pos += len(block)
        if out is not None:
            out.flush()
            del out
    with atomic_path(labels) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, all_labels)
    write_json_atomic(header, {**meta, "built_seconds": round(time.perf_counter() - t0, 3),
                               "content_sha256": content_hash(images, all_labels)})
    _log_build(Path(cache_dir), meta, time.perf_counter() - t0)
    return images, all_labels


def _stack(samples):
    """Samples -> uint8 (B, S, S, 3) HWC block and labels (B,)."""
    return torch.stack([s[0].movedim(0, -1) for s in samples]), torch.as_tensor([s[1] for s in samples], dtype=torch.long)


def _log_build(cache_dir: Path, meta: dict, seconds: float) -> None:
    line = json.dumps({"task": meta["task"], "split": meta["split"], "key": meta["key"], "count": meta["count"],
                       "host": socket.gethostname(), "pid": os.getpid(), "seconds": round(seconds, 3)})
    with open(cache_dir / "builds.jsonl", "a") as fh:
        fh.write(line + "\n")
