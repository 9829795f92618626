"""Shared benchmark helpers: readable tables, the closing JSON line, peak-memory measurement.

Every benchmark prints a table for people and, as its last stdout line, one JSON object for
machines (``emit_json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

MIB = 1 << 20


def rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc/self/statm``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def anon_rss_bytes() -> int:
    """Anonymous (not file-backed) resident memory of this process: what mmapped inputs do not inflate."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Peak:
    """Peak memory seen while a block ran, in bytes above what was in use when it started."""

    rss: int = 0  # resident set size, file-backed pages included
    anon: int = 0  # anonymous resident memory
    cuda: int = 0  # CUDA memory allocated by torch


@contextlib.contextmanager
def peak_memory(device: str = "cpu", interval_s: float = 0.005) -> Iterator[Peak]:
    """Measure the peak memory of the block: host RSS by polling in a thread; CUDA by torch's counters.

    Polling can miss a spike shorter than ``interval_s``; allocations that large take longer
    than that to fill, so the error is small for the tensors a merge allocates.
    """
    peak = Peak()
    start_rss, start_anon = rss_bytes(), anon_rss_bytes()
    top = {"rss": start_rss, "anon": start_anon}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            top["rss"] = max(top["rss"], rss_bytes())
            top["anon"] = max(top["anon"], anon_rss_bytes())
            stop.wait(interval_s)

    cuda_start = 0
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_start = torch.cuda.memory_allocated()
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        top["rss"] = max(top["rss"], rss_bytes())
        top["anon"] = max(top["anon"], anon_rss_bytes())
        peak.rss = top["rss"] - start_rss
        peak.anon = top["anon"] - start_anon
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            peak.cuda = torch.cuda.max_memory_allocated() - cuda_start


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``; synchronises CUDA when asked."""

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = cuda
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def __enter__(self) -> "Stopwatch":
        self._sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._t0


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A fixed-width text table of ``rows`` (dicts) over ``columns``; floats shown with 3 significant digits."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def emit_json(obj: dict[str, Any]) -> None:
    """Print ``obj`` as one compact JSON line; benchmarks call this last."""
    print(json.dumps(obj, separators=(",", ":"), sort_keys=False, default=float), flush=True)
