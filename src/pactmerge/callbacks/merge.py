"""``MergeCallback``: build, tune and evaluate every merged encoder once the fine-tunes exist.

Shaped like Lightning's ``WeightAveraging`` callback: its private state (which merges are
finished, with their results) is built in ``setup``, the work runs when fitting ends
(``on_fit_end``, on global rank zero only), and ``state_dict`` / ``load_state_dict`` carry
that state across a resumed run. The checkpoint store is the durable record: a merge whose
encoder is already in the store is never recomputed.

The callback only moves data: the merging is ``pactmerge.merging.merge_files`` (streamed
from the store's safetensors), α is chosen by ``pactmerge.pipeline.alpha.search_alpha`` on
the validation splits, and accuracy comes from ``pactmerge.pipeline.evaluate``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import pytorch_lightning as pl
from torch import nn

from pactmerge.checkpoints import CheckpointStore
from pactmerge.errors import StageError
from pactmerge.fileio import sha256_file, write_json_atomic
from pactmerge.merging import KeyPolicy, merge_files
from pactmerge.merging import alpha_grid as default_alpha_grid
from pactmerge.pipeline.alpha import search_alpha
from pactmerge.pipeline.evaluate import evaluate_encoder, summarize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeSpec:
    """One merged model to build: a registry method name (``pact+`` prefix included) and its params."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    svd: str = "exact"

    @property
    def id(self) -> str:
        return self.method + ("-rsvd" if self.svd == "randomized" else "")


def merge_specs(methods: list[str], pact: list[str], params: Mapping[str, Any] | None = None,
                pact_params: Mapping[str, Any] | None = None,
                method_params: Mapping[str, Mapping[str, Any]] | None = None) -> list[MergeSpec]:
    """Expand methods × PACT variants ("none", "exact", "randomized") into merge specs.

    ``params`` go to every merge, ``pact_params`` (K, k, protect, ...) to the PACT variants
    only, ``method_params[name]`` to one method (``pact+name`` keys to its PACT form).
    """
    method_params = method_params or {}
    specs = []
    for m in methods:
        base = dict(params or {})
        base.update(method_params.get(m, {}))
        for variant in pact:
            if variant == "none":
                specs.append(MergeSpec(m, dict(base), svd=str(base.get("svd", "exact"))))
            else:
                p = dict(base)
                p.update(pact_params or {})
                p.update(method_params.get(f"pact+{m}", {}))
                p["svd"] = variant
                specs.append(MergeSpec(f"pact+{m}", p, svd=variant))
    return specs


class MergeCallback(pl.Callback):
    """Merge the individual fine-tunes held in ``store`` with every spec, pick α, evaluate, store.

    Args:
        store: the run's checkpoint store (``pretrained`` and ``finetuned/<task>`` entries).
        tasks: task keys, in order; every one needs a ``finetuned/<task>`` entry.
        specs: the merges to build.
        encoder: an image encoder module of the run's architecture (weights are overwritten).
        heads: task -> frozen (C, D) head.
        datamodules: task -> set-up ``TaskDataModule`` (validation for α, test for the result).
        logit_scale: the heads' logit scale.
        key_policy: which keys are matrices (``conv_as_matrix`` for CNN towers).
        alpha_search: ``coarse_to_fine``, ``grid`` or ``fixed``; ``alpha`` is the fixed value.
        alpha_grid: the α values searched instead of each method's default grid.
    """

    def __init__(self, store: CheckpointStore, tasks: list[str], specs: list[MergeSpec], *, encoder: nn.Module,
                 heads: Mapping[str, Any], datamodules: Mapping[str, Any], logit_scale: float,
                 key_policy: KeyPolicy | None = None, alpha_search: str = "coarse_to_fine",
                 alpha: float | None = None, alpha_grid: list[float] | None = None,
                 device: str = "auto") -> None:
        self.store, self.tasks, self.specs = store, list(tasks), list(specs)
        self.encoder, self.heads, self.datamodules = encoder, heads, datamodules
        self.logit_scale, self.key_policy = logit_scale, key_policy or KeyPolicy()
        self.alpha_mode, self.alpha, self.device = alpha_search, alpha, device
        self.alpha_grid = list(alpha_grid) if alpha_grid else None
        self._results: dict[str, dict[str, Any]] = {}

    # -- Lightning hooks -------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._results.update(self._stored_results())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self.missing_finetunes():
            log.info("merge callback: waiting for fine-tunes of %s", ", ".join(self.missing_finetunes()))
            return
        self.run_all()

    def state_dict(self) -> dict[str, Any]:
        return {"results": self._results}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._results.update(state_dict.get("results", {}))

    # -- the work --------------------------------------------------------------------------
    def missing_finetunes(self) -> list[str]:
        return [t for t in self.tasks if not self.store.has(f"finetuned/{t}")]

    def _stored_results(self) -> dict[str, dict[str, Any]]:
        out = {}
        for spec in self.specs:
            name = f"merged/{spec.id}"
            if self.store.has(name) and "test" in self.store.entry(name).get("metrics", {}):
                out[spec.id] = self.store.entry(name)
        return out

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        return dict(self._results)

    def run_all(self) -> dict[str, dict[str, Any]]:
        """Build every spec not yet in the store; returns id -> manifest entry."""
        missing = self.missing_finetunes()
        if missing:
            raise StageError(
                f"cannot merge: no fine-tuned encoder for task(s) {', '.join(missing)}; "
                "run `pactmerge finetune CONFIG --task TASK` (or `pactmerge run CONFIG`) first"
            )
        self._results.update(self._stored_results())
        todo = [s for s in self.specs if s.id not in self._results]
        inputs = self._verified_inputs() if todo else None  # hash and load the shared inputs once
        from tqdm.auto import tqdm

        with tqdm(todo, desc="merging", unit="merge", disable=not todo) as bar:
            for spec in bar:
                bar.set_postfix_str(spec.id)
                self._results[spec.id] = self.run_one(spec, inputs)
        return self.results

    def _verified_inputs(self) -> tuple[str, list[str], dict[str, Any]]:
        """(pre-trained path, fine-tuned paths, pre-trained state), every file checked against its sha256."""
        names = ["pretrained"] + [f"finetuned/{t}" for t in self.tasks]
        for name in names:
            entry, path = self.store.entry(name), self.store.path(name)
            if sha256_file(path) != entry["sha256"]:
                raise StageError(f"{path}: contents changed since they were stored (sha256 mismatch); re-run its stage")
        paths = [str(self.store.path(n)) for n in names]
        return paths[0], paths[1:], self.store.load_state("pretrained")

    def run_one(self, spec: MergeSpec, inputs: tuple[str, list[str], dict[str, Any]] | None = None) -> dict[str, Any]:
        pre_path, ft_paths, pretrained = inputs or self._verified_inputs()
        t0 = time.perf_counter()
        res = merge_files(pre_path, ft_paths, spec.method, params=spec.params, key_policy=self.key_policy,
                          device=self.device)
        merge_s = time.perf_counter() - t0

        def val_score(alpha: float) -> float:
            accs = evaluate_encoder(self.encoder, res.apply(pretrained, alpha), self.heads, self.datamodules,
                                    split="val", logit_scale=self.logit_scale, device=self.device)
            return summarize(accs)["avg_absolute"]

        t1 = time.perf_counter()
        grid = default_alpha_grid(spec.method)
        if self.alpha_grid and len(grid) > 1:  # weight averaging keeps its single α = 1
            grid = self.alpha_grid
        mode = self.alpha_mode if len(grid) > 1 else "fixed"
        fixed = self.alpha if self.alpha is not None else res.default_alpha
        search = search_alpha(val_score, grid, mode, fixed=fixed)
        merged = res.apply(pretrained, search.best_alpha)
        test = evaluate_encoder(self.encoder, merged, self.heads, self.datamodules, split="test",
                                logit_scale=self.logit_scale, device=self.device)
        eval_s = time.perf_counter() - t1
        diag_path = self.store.root / "diagnostics" / f"{spec.id.replace('+', '_')}.json"
        write_json_atomic(diag_path, res.diagnostics)
        meta = {
            "kind": "merged",
            "method": res.method,
            "params": res.params,
            "alpha": search.best_alpha,
            "alpha_search": {"mode": mode, "evaluations": search.evaluations,
                             "curve": {str(a): s for a, s in search.curve.items()}},
            "metrics": {"val_avg": search.best_score, "test": test},
            "diagnostics_file": str(diag_path.relative_to(self.store.root)),
            "timings": {"merge_s": merge_s, "alpha_and_eval_s": eval_s, **res.timings},
        }
        self.store.save_state(f"merged/{spec.id}", merged, meta)
        log.info("merged %s: alpha=%.2f (%d evaluations), test avg %.2f%%", spec.id, search.best_alpha,
                 search.evaluations, 100 * summarize(test)["avg_absolute"])
        return self.store.entry(f"merged/{spec.id}")
