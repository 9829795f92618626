"""The merge engine: one per-key loop over a state source (in memory or lazily opened files).

``merge`` and ``merge_files`` differ only in the sources they build; both run ``_Engine``,
so their results are bitwise identical. Matrix keys of the same shape are merged in batches
(bounded by ``_BATCH_BYTES`` of task-vector data), so a streaming merge holds about T times
one batch of keys plus the merged output, never T models.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from pactmerge.errors import MergeError
from pactmerge.merging import pact as pact_mod
from pactmerge.merging.cache import PACTCache
from pactmerge.merging.device import resolve_device, return_freed_memory
from pactmerge.merging.pact import PACTConfig
from pactmerge.merging.params import svd_options
from pactmerge.merging.keys import KeyPolicy, matrix_shape
from pactmerge.merging.registry import get_method, resolve_params
from pactmerge.merging.sources import DictSource, check_finite, fingerprint, open_source, validate_sources
from pactmerge.merging.spec import KeyContext, mean_of_tasks
from pactmerge.merging.task_vector import TaskVector, apply_task_vector

log = logging.getLogger(__name__)

_BATCH_BYTES = {"cpu": 64 << 20, "cuda": 1 << 30}  # task-vector bytes per batch of same-shape keys
_CACHE_BYTES = 4 << 30  # in-memory merges keep preprocessed task vectors for a second pass up to this
_PRIVATE_PACT_BYTES = 1 << 30  # a streaming multi-pass pact+ merge keeps PACT's output up to this


# per-key notices that methods record in their diagnostics, and what they mean (one warning per merge)
_KEY_NOTICES = {
    "tsvm_zero_rank_keys": "have min(m, n) < T, so r_t = 0 and they keep their pre-trained value",
    "iso_cts_no_task_subspace": "have no room for task-specific directions (s = 0) and are merged as Iso-C",
}


@dataclass
class MergeResult:
    """A merged task vector and how it was made.

    ``tau``: key -> float32 CPU tensor for every floating-point key (integer buffers excluded).
    ``params``: the resolved method parameters, SVD options included (JSON-able).
    ``pact_params``: the resolved PACT parameters for ``pact+`` methods, else None.
    ``diagnostics``: JSON-able (``diagnostics["pact"]`` for ``pact+`` methods). ``timings``:
    seconds per phase.
    """

    method: str
    params: dict
    tau: dict[str, Tensor]
    default_alpha: float
    diagnostics: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    pact_params: dict | None = None

    @property
    def task_vector(self) -> TaskVector:
        """The merged task vector ``tau`` as a ``TaskVector`` (shares its tensors)."""
        return TaskVector(self.tau)

    def apply(self, pretrained: Mapping[str, Tensor], alpha: float | None = None) -> dict[str, Tensor]:
        """``theta0 + alpha * tau`` (``default_alpha`` when ``alpha`` is None), in ``theta0``'s dtypes;
        integer buffers copied from ``theta0`` untouched."""
        return apply_task_vector(pretrained, self.tau, self.default_alpha if alpha is None else alpha)


def merge(
    pretrained: Mapping[str, Tensor],
    finetuned: Sequence[Mapping[str, Tensor]],
    method: str,
    *,
    params: Mapping[str, Any] | None = None,
    pact: PACTConfig | Mapping[str, Any] | None = None,
    key_policy: KeyPolicy | None = None,
    device: str = "auto",
    compute_dtype: torch.dtype = torch.float32,
    task_ids: Sequence[str] | None = None,
    batch_bytes: int | None = None,
    pact_cache: PACTCache | None = None,
) -> MergeResult:
    """Merge in-memory state dicts. ``finetuned`` are T state dicts with the pre-trained keys and shapes.

    ``params``: the method's parameters and the merge-wide SVD options (``svd``, ``oversample``,
    ``power_iters``, ``seed``). ``pact``: PACT's parameters (``PACTConfig`` or mapping; also
    accepted as ``params["pact"]``), only for ``pact+`` methods. ``task_ids``: one stable
    identity string per fine-tuned model (e.g. its file's sha256); they seed the randomized
    SVDs' test matrices, so the result does not depend on the order of ``finetuned``. Without
    them a content fingerprint of each model is used (see ``sources.fingerprint``).
    ``batch_bytes``: task-vector bytes per batch of same-shape matrix keys (default per device);
    it changes speed and memory only, never the result beyond rounding. ``pact_cache``: a
    ``PACTCache`` shared by several ``pact+`` merges of the same inputs, so PACT runs once
    (results bitwise identical to a merge without it).

    Raises ``MergeError`` for an unknown method or parameter, mismatched keys or shapes (naming the
    key and ``model i``, 1-based), NaN/Inf inputs, or an empty list.
    """
    pre = DictSource(pretrained, "the pre-trained model")
    fts = [DictSource(sd, f"model {i + 1}") for i, sd in enumerate(finetuned)]
    return _Engine(
        pre, fts, method, params, pact, key_policy, device, compute_dtype, cacheable=True,
        task_ids=task_ids, batch_bytes=batch_bytes, pact_cache=pact_cache,
    ).run()


def merge_files(
    pretrained: str | os.PathLike,
    finetuned: Sequence[str | os.PathLike],
    method: str,
    *,
    params: Mapping[str, Any] | None = None,
    pact: PACTConfig | Mapping[str, Any] | None = None,
    key_policy: KeyPolicy | None = None,
    device: str = "auto",
    compute_dtype: torch.dtype = torch.float32,
    task_ids: Sequence[str] | None = None,
    batch_bytes: int | None = None,
    pact_cache: PACTCache | None = None,
) -> MergeResult:
    """Streaming ``merge`` over checkpoint files: safetensors files are read key by key.

    Same keywords as ``merge``, and the same result (bitwise) as ``merge`` on the loaded state
    dicts given the same ``task_ids``. File problems raise ``CheckpointError``. Without a
    ``pact_cache``, a multi-pass ``pact+`` method (``pact+ties``) keeps PACT's output between its
    passes in a private cache of up to 1 GiB, beyond which it recomputes.
    """
    pre = open_source(pretrained, str(pretrained))
    fts = [open_source(p, str(p)) for p in finetuned]
    return _Engine(
        pre, fts, method, params, pact, key_policy, device, compute_dtype, cacheable=False,
        task_ids=task_ids, batch_bytes=batch_bytes, pact_cache=pact_cache,
    ).run()


class _Engine:
    def __init__(self, pre, fts, method, params, pact, key_policy, device, compute_dtype, cacheable,
                 task_ids=None, batch_bytes=None, pact_cache=None):
        if compute_dtype not in (torch.float32, torch.float64):
            raise MergeError(f"compute_dtype must be torch.float32 or torch.float64, got {compute_dtype}")
        self.spec = get_method(method)
        self.mparams, self.pact_cfg, self.resolved, self.pact_resolved = resolve_params(self.spec, params, pact)
        self.svd = svd_options(self.mparams)
        self.pre, self.fts = pre, list(fts)
        if task_ids is not None:
            task_ids = [str(t) for t in task_ids]
            if len(task_ids) != len(self.fts):
                raise MergeError(f"task_ids has {len(task_ids)} entries for {len(self.fts)} fine-tuned models")
        self.task_ids = task_ids
        if batch_bytes is not None and not (isinstance(batch_bytes, int) and batch_bytes > 0):
            raise MergeError(f"batch_bytes must be a positive integer, got {batch_bytes!r}")
        self.batch_bytes = batch_bytes
        if pact_cache is not None and not isinstance(pact_cache, PACTCache):
            raise MergeError(f"pact_cache must be a PACTCache, got {type(pact_cache).__name__}")
        if pact_cache is None and self.spec.pact and self.spec.prepare is not None and not cacheable:
            pact_cache = PACTCache(_PRIVATE_PACT_BYTES)
        self.pact_cache = pact_cache if self.spec.pact else None
        self._pact_sig = None
        self._pact_counts = {"computed_keys": 0, "served_keys": 0}
        self.policy = key_policy or KeyPolicy()
        self.device = resolve_device(device)
        self.dtype = compute_dtype
        self.cacheable = cacheable
        self.timings: dict[str, float] = defaultdict(float)
        self._cache: dict[int, Tensor] | None = None
        self._pact_diag: dict[str, list[dict]] = {}
        # task by task where the result is the same bitwise: the mean of vector keys, and matrix keys
        # of a method whose module offers BY_TASK (not under PACT, which needs every task at once)
        self._vector_mean = self.spec.merge_vectors is mean_of_tasks
        module = sys.modules.get(getattr(self.spec.merge_matrices, "__module__", ""))
        form = getattr(module, "BY_TASK", None)
        mine = getattr(module, "merge_matrices", None) is self.spec.merge_matrices
        self._task_form = form if mine and not self.spec.pact and self.spec.prepare is None else None

    def _pact_applies(self, key: str) -> bool:
        return self.spec.pact and self.policy.pact_applies(key) and self.pact_cfg.applies(key)

    # -- planning ---------------------------------------------------------------------------
    def _plan(self) -> list[tuple[str, list[str]]]:
        """Work items: ("vector", [key]) or ("matrix", [same-shape keys]).

        Keys are visited in sorted order, so the batches (and so the bits of the result) do not
        depend on the order in which a source lists its keys (safetensors files sort them).
        """
        T = len(self.fts)
        budget = self.batch_bytes or _BATCH_BYTES.get(self.device.type, _BATCH_BYTES["cpu"])
        itemsize = torch.finfo(self.dtype).bits // 8
        items, open_batch = [], {}
        for key in sorted(self.pre.keys()):
            meta = self.pre.meta(key)
            kind = self.policy.kind(key, meta)
            if kind == "int":
                continue
            if kind == "vector":
                items.append(("vector", [key]))
                continue
            group = (meta.shape, self._pact_applies(key))
            size = T * itemsize * max(1, int(torch.tensor(meta.shape).prod()))
            batch = open_batch.get(group)
            if batch is None or (len(batch) + 1) * size > budget:
                batch = []
                open_batch[group] = batch
                items.append(("matrix", batch))
            batch.append(key)
        return items

    # -- loading and preprocessing ------------------------------------------------------------
    def _load(self, keys: list[str], tasks: range | None = None, base: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(theta0 (B, *shape), taus (len(tasks), B, *shape)) on the device in the compute dtype
        (all tasks by default; ``base`` when theta0 is already loaded)."""
        t0 = time.perf_counter()
        if base is None:
            base = []
            for key in keys:
                t = self.pre.get(key)
                check_finite(t, key, self.pre.name)
                base.append(t.to(self.device, self.dtype))
            base = torch.stack(base)
        tasks = range(len(self.fts)) if tasks is None else tasks
        taus = torch.empty((len(tasks), *base.shape), dtype=self.dtype, device=self.device)
        for i, src in enumerate(self.fts[j] for j in tasks):
            for b, key in enumerate(keys):
                t = src.get(key)
                check_finite(t, key, src.name)
                taus[i, b] = t.to(self.device, self.dtype) - base[b]
        self.timings["load"] += time.perf_counter() - t0
        return base, taus

    def _by_task(self, kind: str, keys: list[str], ctx: KeyContext) -> Tensor:
        """One item merged from a few tasks at a time (``torch.get_num_threads()`` on the CPU), so
        the T task vectors are never all held: vector keys as the float64 running mean (what
        ``mean_of_tasks`` computes, bitwise), matrix keys through the method's ``BY_TASK`` form."""
        T = len(self.fts)
        step = max(1, torch.get_num_threads()) if self.device.type == "cpu" else T
        base, parts, acc = None, [], None
        for start in range(0, T, step):
            tasks = range(start, min(T, start + step))
            base, taus = self._load(keys, tasks, base)
            if kind == "vector":
                for t in taus[:, 0]:
                    acc = t.to(torch.float64, copy=True) if acc is None else acc.add_(t)
            else:
                m, n = matrix_shape(tuple(base.shape[1:]))
                sub = KeyContext(keys, ctx.state, ctx.task_ids[start : start + step] if ctx.task_ids else ())
                parts.append(self._task_form[0](taus.reshape(len(tasks), len(keys), m, n), self.mparams, sub, T))
            taus = None
        if kind == "vector":
            return (acc / T).to(self.dtype)
        return self._task_form[1](parts, self.mparams, ctx, base.reshape(len(keys), m, n))

    def _items(self, record: bool, lazy: bool = False) -> Iterator[tuple[str, list[str], Tensor | None]]:
        """(kind, keys, task vectors) per work item; matrix items as (T, B, m, n) after PACT.
        ``lazy``: None instead of the task vectors for items ``_by_task`` can merge."""
        for idx, (kind, keys) in enumerate(self._plan()):
            if self._cache is not None and idx in self._cache:
                yield kind, keys, self._cache[idx]
                continue
            if lazy and (self._vector_mean if kind == "vector" else self._task_form is not None):
                yield kind, keys, None
                continue
            if kind == "matrix" and self.pact_cache is not None and self._pact_applies(keys[0]):
                hit = self.pact_cache.get(self._pact_signature(), keys, self.device)
                if hit is not None:
                    taus, diags = hit
                    self._pact_counts["served_keys"] += len(keys)
                    if record:
                        self._pact_diag.update(zip(keys, diags))
                    if self._cache is not None and self._cache_room(taus):
                        self._cache[idx] = taus
                    yield kind, keys, taus
                    continue
            base, taus = self._load(keys)
            if kind == "matrix":
                T, B = taus.shape[:2]
                m, n = matrix_shape(tuple(taus.shape[2:]))
                taus, base = taus.reshape(T, B, m, n), base.reshape(B, m, n)
                if self._pact_applies(keys[0]):
                    t0 = time.perf_counter()
                    taus, diags = pact_mod.pact_filter_batch(
                        base, taus, self.pact_cfg, keys, self.svd, self.task_ids or None, inplace=True
                    )
                    self._sync()
                    self.timings["pact"] += time.perf_counter() - t0
                    self._pact_counts["computed_keys"] += len(keys)
                    if record:
                        self._pact_diag.update(zip(keys, diags))
                    if self.pact_cache is not None:
                        pins = [s._state for s in [self.pre, *self.fts] if isinstance(s, DictSource)]
                        self.pact_cache.put(self._pact_signature(), keys, taus, diags, pin=pins or None)
            if self._cache is not None and self._cache_room(taus):
                self._cache[idx] = taus
            yield kind, keys, taus
            base = taus = None  # nothing of this batch outlives its consumer

    def _pact_signature(self) -> tuple:
        """Everything PACT's output depends on (see ``PACTCache``); computed once per merge."""
        if self._pact_sig is None:
            budget = self.batch_bytes or _BATCH_BYTES.get(self.device.type, _BATCH_BYTES["cpu"])
            self._pact_sig = (
                tuple(src.identity() for src in [self.pre, *self.fts]),
                tuple(self.task_ids) if self.task_ids else None,
                self.pact_cfg,
                self.svd,
                self.policy,
                str(self.dtype),
                str(self.device),
                budget,
            )
        return self._pact_sig

    def _cache_room(self, taus: Tensor) -> bool:
        used = sum(t.numel() * t.element_size() for t in self._cache.values())
        return used + taus.numel() * taus.element_size() <= _CACHE_BYTES

    def _stream(self) -> Iterator[tuple[str, Tensor]]:
        for kind, keys, taus in self._items(record=True):
            for b, key in enumerate(keys):
                yield key, (taus[:, b] if kind == "matrix" else taus[:, 0])

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- the merge -------------------------------------------------------------------------------
    def run(self) -> MergeResult:
        start = time.perf_counter()
        validate_sources(self.pre, self.fts)
        if self.task_ids is None and (self.svd.svd == "randomized" or self.spec.needs_task_ids):
            t0 = time.perf_counter()
            self.task_ids = [fingerprint(src) for src in self.fts]
            self.timings["fingerprint"] += time.perf_counter() - t0
        state: dict[str, Any] = {"task_ids": tuple(self.task_ids or ())}
        if self.spec.prepare is not None:
            if self.cacheable:
                self._cache = {}
            t0 = time.perf_counter()
            self.spec.prepare(self._stream, self.mparams, state)
            self.timings["prepare"] += time.perf_counter() - t0
        tau: dict[str, Tensor] = {}
        for kind, keys, taus in self._items(record=True, lazy=True):
            t0 = time.perf_counter()
            ctx = KeyContext(keys, state, tuple(self.task_ids or ()))
            if taus is None:
                merged = self._by_task(kind, keys, ctx)
                merged = merged if kind == "matrix" else merged.unsqueeze(0)
            elif kind == "matrix":
                merged = self.spec.merge_matrices(taus, self.mparams, ctx)
            else:
                merged = self.spec.merge_vectors(taus[:, 0], self.mparams, ctx).unsqueeze(0)
            for b, key in enumerate(keys):
                tau[key] = merged[b].reshape(self.pre.meta(key).shape).to("cpu", torch.float32)
            taus = merged = None  # free this batch before the next one is read
            if not self.cacheable:  # a streaming merge: what this batch freed goes back to the OS
                return_freed_memory()
            self._sync()
            self.timings["merge"] += time.perf_counter() - t0
        self._cache = None
        if self.spec.finalize is not None:
            self.spec.finalize(tau, self.mparams, state)
        order = [k for k in self.pre.keys() if k in tau]
        tau = {k: tau[k] for k in order}
        diagnostics: dict[str, Any] = {"device": str(self.device), "num_tasks": len(self.fts)}
        if self.task_ids is not None:
            diagnostics["task_ids"] = list(self.task_ids)
        diagnostics.update(state.get("diagnostics", {}))
        for name, what in _KEY_NOTICES.items():
            if diagnostics.get(name):
                keys = diagnostics[name]
                log.warning("%s: %d keys %s (e.g. %r); listed in the diagnostics under %r", self.spec.name,
                            len(keys), what, keys[0], name)
        if self.spec.pact:
            diagnostics["pact"] = pact_mod.summarize({k: self._pact_diag[k] for k in order if k in self._pact_diag})
            diagnostics["pact_cache"] = dict(self._pact_counts)
        self.timings["total"] = time.perf_counter() - start
        log.debug("merged %d keys of %d models with %s in %.2fs", len(tau), len(self.fts), self.spec.name, self.timings["total"])
        return MergeResult(
            method=self.spec.name,
            params=self.resolved,
            tau=tau,
            default_alpha=self.spec.default_alpha,
            diagnostics=diagnostics,
            timings=dict(self.timings),
            pact_params=self.pact_resolved,
        )
