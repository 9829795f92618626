"""The merge stage: every configured merge of a study, its α chosen on validation data, evaluated, stored.

One entry point, ``run_merge_stage(ctx)``, used by ``pactmerge run``, ``pactmerge merge CONFIG``
and the ``MergeCallback``. In order:

1. **Plan** (``pipeline.merge_plan.plan_merges``): ``merge.methods`` (or ``all``: every base method of the registry)
   × ``merge.pact`` variants (``none``, ``exact``, ``randomized``) -> ``PlannedMerge`` entries.
   Parameters are routed by namespace: ``merge.params`` reach every merge (method parameters and
   the merge-wide SVD options ``svd``, ``oversample``, ``power_iters``, ``seed``);
   ``merge.pact_params`` reach PACT only (the ``pact=`` keyword of ``merge_files``);
   ``merge.method_params.<m>`` reach ``m`` and ``pact+m`` alike; ``merge.method_params["pact+m"]``
   reach ``pact+m`` only (its PACT keys to PACT, the rest to the method).
2. **Inputs** (``check_inputs``): every individual fine-tune must exist (one check, one message)
   and every stored file must still match its sha256; the pre-trained state is loaded once.
3. **Merge**: ``pactmerge.merging.merge_files``, streamed from the store's safetensors. All
   ``pact+`` merges of one stage share one PACT cache of the core (contract 5), so PACT's cleaned
   task vectors are computed once per stage for each PACT configuration.
4. **α** (``choose_alpha``): the method's grid (or ``merge.alpha_grid``) is searched by
   ``merge.alpha_search`` (``coarse_to_fine``, ``grid``, ``fixed``) on a fixed seeded subset of
   each task's validation split (``ALPHA_SUBSET`` examples per task, drawn with
   ``numpy.random.default_rng(cfg.seed)``; the whole split when it is no larger), then the best
   ``ALPHA_CONFIRM`` α of that search are re-scored on the full validation splits and the best
   of those is chosen (ties to the smaller α); the re-scoring evaluates only each subset's
   complement and adds the counts already made on the subset. ``fixed`` and single-point grids
   are scored on the full splits only.
5. **Store**: the merged encoder as ``merged/<id>``, its entry recording the resolved method
   parameters (``params``) and PACT parameters (``pact_params``) separately, α, the search
   (curve on the subset, ``confirmed`` scores on the full split), test accuracy and timings;
   the core's diagnostics go to ``diagnostics/<id>.json``.

A merge already in the store (with test metrics) is never recomputed.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from pactmerge.errors import ConfigError, StageError
from pactmerge.fileio import sha256_file, write_json_atomic
from pactmerge.pipeline.merge_plan import (  # noqa: F401  (re-exported: the stage's plan)
    PlannedMerge, _pact_field_names, expand_methods, plan_merges, resolved_params)

log = logging.getLogger(__name__)

ALPHA_SUBSET = 128  # validation examples per task of the α search's first pass
ALPHA_CONFIRM = 3  # best α of the first pass re-scored on the full validation splits


# -- 1. plan: pipeline.merge_plan ---------------------------------------------------------------
def _core_accepts(name: str) -> bool:
    from pactmerge.merging import merge_files

    return name in inspect.signature(merge_files).parameters


def core_kwargs(planned: PlannedMerge, inputs: "MergeInputs | None" = None, pact_cache: Any = None) -> dict[str, Any]:
    """``params`` / ``pact`` (/ ``task_ids``, ``pact_cache`` where the core takes them) of ``merge_files``."""
    kwargs: dict[str, Any] = {"params": dict(planned.params)}
    if planned.pact is not None:
        kwargs["pact"] = dict(planned.pact)
        if pact_cache is not None and _core_accepts("pact_cache"):
            kwargs["pact_cache"] = pact_cache
    if inputs is not None and _core_accepts("task_ids"):
        kwargs["task_ids"] = list(inputs.task_ids)  # seeds of randomized SVDs follow the models, not their order
    return kwargs


def new_pact_cache() -> Any:
    """The core's PACT cache shared by the ``pact+`` merges of one stage (None when the core has none)."""
    from pactmerge import merging

    cls = getattr(merging, "PACTCache", None)
    return cls() if cls is not None else None


# -- 2. inputs ---------------------------------------------------------------------------------------
@dataclass
class MergeInputs:
    pretrained_path: str
    finetuned_paths: list[str]
    pretrained: dict[str, Any]  # the pre-trained encoder state (CPU tensors)
    task_ids: list[str]  # sha256 of each fine-tuned file: the models' identities


def missing_finetunes(ctx: Any) -> list[str]:
    return [t for t in ctx.task_keys if not ctx.store.has(f"finetuned/{t}")]


def check_inputs(ctx: Any) -> MergeInputs:
    """The merge inputs of ``ctx``'s store, each file checked against its sha256 (``StageError`` otherwise)."""
    missing = missing_finetunes(ctx)
    if missing:
        raise StageError(f"merge needs the individual fine-tunes of {', '.join(missing)}; run "
                         "`pactmerge finetune CONFIG --task TASK` for each (or `pactmerge run CONFIG`) first")
    store = ctx.store
    names = ["pretrained"] + [f"finetuned/{t}" for t in ctx.task_keys]
    for name in names:
        path = store.path(name)
        if sha256_file(path) != store.entry(name)["sha256"]:
            raise StageError(f"{path}: contents changed since they were stored (sha256 mismatch); re-run its stage")
    paths = [str(store.path(n)) for n in names]
    ids = [store.entry(n)["sha256"] for n in names[1:]]
    return MergeInputs(paths[0], paths[1:], store.load_state("pretrained"), ids)


# -- 4. alpha ----------------------------------------------------------------------------------------
@dataclass
class AlphaSearch:
    best_alpha: float
    best_score: float
    curve: dict[float, float] = field(default_factory=dict)  # alpha -> mean validation accuracy

    @property
    def evaluations(self) -> int:
        return len(self.curve)


def search_alpha(score: Callable[[float], float], grid: Sequence[float], mode: str = "coarse_to_fine", *,
                 stride: int = 4, fixed: float | None = None) -> AlphaSearch:
    """Maximise ``score(alpha)`` over ``grid``; ties go to the smaller α.

    ``mode``: ``grid`` (every point), ``coarse_to_fine`` (every ``stride``-th point, both ends
    included, then every point between the best coarse point's neighbours; on the unimodal curves
    merging produces this finds the grid optimum with about half the evaluations), or ``fixed``
    (only ``fixed``, which defaults to the grid's single point).
    """
    grid = sorted(round(float(a), 6) for a in grid)
    if not grid:
        raise ValueError("empty alpha grid")
    curve: dict[float, float] = {}

    def visit(indices):
        for i in indices:
            if grid[i] not in curve:
                curve[grid[i]] = float(score(grid[i]))

    if mode == "fixed":
        a = grid[0] if fixed is None else round(float(fixed), 6)
        curve[a] = float(score(a))
    elif mode == "grid" or len(grid) <= 2 * stride:
        visit(range(len(grid)))
    elif mode == "coarse_to_fine":
        coarse = list(range(0, len(grid), stride))
        if coarse[-1] != len(grid) - 1:
            coarse.append(len(grid) - 1)
        visit(coarse)
        pos = coarse.index(grid.index(_argmax(curve)))
        visit(range(coarse[max(pos - 1, 0)], coarse[min(pos + 1, len(coarse) - 1)] + 1))
    else:
        raise ValueError(f"unknown alpha search mode {mode!r}; use grid, coarse_to_fine or fixed")
    best = _argmax(curve)
    return AlphaSearch(best_alpha=best, best_score=curve[best], curve=dict(sorted(curve.items())))


def _argmax(curve: Mapping[float, float]) -> float:
    return max(sorted(curve), key=lambda a: (curve[a], -a))


@dataclass
class AlphaChoice:
    alpha: float
    val_score: float  # mean validation accuracy at ``alpha`` on the full splits
    search: AlphaSearch  # the search (on the subset when ``subset`` is set)
    confirmed: dict[float, float]  # alpha -> full-split score of the re-scored candidates
    subset: int | None  # examples per task of the first pass; None: the search ran on the full splits

    def record(self, mode: str) -> dict[str, Any]:
        return {"mode": mode, "evaluations": self.search.evaluations,
                "curve": {str(a): s for a, s in self.search.curve.items()},
                "subset_per_task": self.subset, "confirmed": {str(a): s for a, s in self.confirmed.items()}}


def choose_alpha(full: Callable[[float], float], grid: Sequence[float], mode: str, *,
                 subset: Callable[[float], float] | None = None, confirm: int = ALPHA_CONFIRM,
                 fixed: float | None = None, subset_size: int | None = None) -> AlphaChoice:
    """α by ``search_alpha`` on ``subset`` scores, then the best ``confirm`` re-scored by ``full``
    (see the module docstring); without ``subset`` (or for ``fixed``), the search runs on ``full``."""
    if subset is None or mode == "fixed" or len(grid) == 1:
        search = search_alpha(full, grid, mode, fixed=fixed)
        return AlphaChoice(search.best_alpha, search.best_score, search, dict(search.curve), None)
    search = search_alpha(subset, grid, mode, fixed=fixed)
    candidates = sorted(search.curve, key=lambda a: (-search.curve[a], a))[:max(1, confirm)]
    confirmed = {a: float(full(a)) for a in sorted(candidates)}
    best = _argmax(confirmed)
    return AlphaChoice(best, confirmed[best], search, confirmed, subset_size)


# -- 3 + 5. the stage --------------------------------------------------------------------------------
def stored_results(ctx: Any, merges: Sequence[PlannedMerge]) -> dict[str, dict[str, Any]]:
    """id -> manifest entry of every planned merge already stored with its test metrics."""
    out = {}
    for planned in merges:
        name = f"merged/{planned.id}"
        if ctx.store.has(name) and "test" in ctx.store.entry(name).get("metrics", {}):
            out[planned.id] = ctx.store.entry(name)
    return out


def run_merge_stage(ctx: Any, merges: Sequence[PlannedMerge] | None = None, *,
                    built: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Build every planned merge of ``ctx`` (default: ``plan_merges(ctx.cfg.merge)``) not yet stored.

    Returns id -> manifest entry for every planned merge; the ids built now are appended to
    ``built`` when given. ``StageError`` when a fine-tune is missing.
    """
    try:
        merges = list(plan_merges(ctx.cfg.merge) if merges is None else merges)
    except KeyError as exc:
        raise ConfigError(f"config: merge.pact lists an unknown variant {exc}") from exc
    inputs = check_inputs(ctx)
    results = stored_results(ctx, merges)
    todo = [p for p in merges if p.id not in results]
    if not todo:
        return results
    from tqdm.auto import tqdm

    from pactmerge.merging import KeyPolicy

    m = ctx.cfg.merge
    key_policy = KeyPolicy(conv_as_matrix=m.conv_as_matrix, exclude=tuple(m.exclude))
    scorer = _Scorer(ctx)
    cache = new_pact_cache() if any(p.pact is not None for p in todo) else None
    with tqdm(todo, desc="merging", unit="merge") as bar:
        for planned in bar:
            bar.set_postfix_str(planned.id)
            results[planned.id] = _build_one(ctx, planned, inputs, key_policy, scorer, cache)
            if built is not None:
                built.append(planned.id)
    return {p.id: results[p.id] for p in merges}


class _Scorer:
    """Mean validation accuracy of merged states, on the seeded subsets or on the full splits, and test accuracy.

    A full-split score of an α already scored on the subsets evaluates only the subsets'
    complements and adds the counts (correct = accuracy × examples, exact integers), so the
    re-scoring pass costs the rest of each split, not all of it. The result equals an
    evaluation of the whole split: each example is classified on its own (eval mode).
    """

    def __init__(self, ctx: Any, subset_size: int = ALPHA_SUBSET) -> None:
        from pactmerge.pipeline.evaluate import SplitSubset

        self.ctx, self.device = ctx, ctx.cfg.merge.device
        self.dms = ctx.datamodules()
        seed = ctx.cfg.seed
        self.subsets = {t: SplitSubset(dm, "val", subset_size, seed) for t, dm in self.dms.items()}
        rests = {t: SplitSubset(dm, "val", subset_size, seed, complement=True) for t, dm in self.dms.items()}
        self.rests = {t: r for t, r in rests.items() if len(r)}
        self.use_subset = bool(self.rests)
        self._subset_counts: dict[float, dict[str, int]] = {}

    def accuracies(self, state: Mapping[str, Any], split: str, dms: Mapping[str, Any]) -> dict[str, float]:
        from pactmerge.pipeline.evaluate import evaluate_encoder

        if not dms:
            return {}
        loaded = self.ctx.loaded
        return evaluate_encoder(loaded.encoder, state, self.ctx.heads(), dms, split=split,
                                logit_scale=loaded.logit_scale, device=self.device)

    def new_merge(self) -> None:
        """Forget the subset counts of the previous merge."""
        self._subset_counts.clear()

    def subset_score(self, alpha: float, state: Mapping[str, Any]) -> float:
        accs = self.accuracies(state, "val", self.subsets)
        self._subset_counts[alpha] = {t: round(a * len(self.subsets[t])) for t, a in accs.items()}
        return sum(accs.values()) / len(accs)

    def full_score(self, alpha: float, state: Mapping[str, Any]) -> float:
        counts = self._subset_counts.get(alpha)
        if counts is None:
            accs = self.accuracies(state, "val", self.dms)
            return sum(accs.values()) / len(accs)
        rest = self.accuracies(state, "val", self.rests)
        accs = {}
        for t, sub in self.subsets.items():
            n_rest = len(self.rests[t]) if t in self.rests else 0
            correct = counts[t] + (round(rest[t] * n_rest) if n_rest else 0)
            accs[t] = correct / (len(sub) + n_rest)
        return sum(accs.values()) / len(accs)


def _build_one(ctx: Any, planned: PlannedMerge, inputs: MergeInputs, key_policy: Any, scorer: _Scorer,
               cache: Any) -> dict[str, Any]:
    from pactmerge.merging import alpha_grid as default_alpha_grid
    from pactmerge.merging import merge_files
    from pactmerge.pipeline.evaluate import summarize

    m, store = ctx.cfg.merge, ctx.store
    scorer.new_merge()
    t0 = time.perf_counter()
    res = merge_files(inputs.pretrained_path, inputs.finetuned_paths, planned.method, key_policy=key_policy,
                      device=m.device, **core_kwargs(planned, inputs, cache))
    merge_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    grid = default_alpha_grid(planned.method)
    if m.alpha_grid and len(grid) > 1:  # weight averaging keeps its single α = 1
        grid = list(m.alpha_grid)
    mode = m.alpha_search if len(grid) > 1 else "fixed"
    fixed = m.alpha if m.alpha is not None else res.default_alpha
    choice = choose_alpha(lambda a: scorer.full_score(a, res.apply(inputs.pretrained, a)), grid, mode,
                          subset=(lambda a: scorer.subset_score(a, res.apply(inputs.pretrained, a)))
                          if scorer.use_subset else None,
                          fixed=fixed, subset_size=ALPHA_SUBSET)
    merged = res.apply(inputs.pretrained, choice.alpha)
    test = scorer.accuracies(merged, "test", scorer.dms)
    eval_s = time.perf_counter() - t1

    diag_path = store.root / "diagnostics" / f"{planned.id.replace('+', '_')}.json"
    write_json_atomic(diag_path, res.diagnostics)
    meta = {
        "kind": "merged",
        "method": res.method,
        "params": res.params,
        "pact_params": res.pact_params,
        "alpha": choice.alpha,
        "alpha_search": choice.record(mode),
        "metrics": {"val_avg": choice.val_score, "test": test},
        "diagnostics_file": str(diag_path.relative_to(store.root)),
        "timings": {"merge_s": merge_s, "alpha_and_eval_s": eval_s, **res.timings},
    }
    store.save_state(f"merged/{planned.id}", merged, meta)
    log.info("merged %s: alpha=%.2f (%d+%d evaluations), test avg %.2f%%, %.1f s", planned.id, choice.alpha,
             choice.search.evaluations, len(choice.confirmed) if choice.subset else 0,
             100 * summarize(test)["avg_absolute"], merge_s + eval_s)
    return store.entry(f"merged/{planned.id}")
