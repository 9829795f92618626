"""The merge stage: every configured merge of a study, its α chosen on validation data, stored.

One entry point, ``run_merge_stage(ctx)``, used by ``pactmerge run``, ``pactmerge merge CONFIG``
and the ``MergeCallback``. In order:

1. **Plan** (``pipeline.merge_plan.plan_merges``): methods × PACT variants -> ``PlannedMerge``
   entries, their parameters routed by namespace (see ``merge_plan``).
2. **Inputs** (``check_inputs``): every individual fine-tune must exist (one check, one message)
   and every stored file must still match its sha256; the pre-trained state is loaded once.
3. **Merge**: ``pactmerge.merging.merge_files``, streamed from the store's safetensors. All
   ``pact+`` merges of one stage share one ``PACTCache``, so PACT's cleaned task vectors are
   computed once per stage for each PACT configuration; randomized SVDs are seeded by the
   fine-tunes' sha256 (``task_ids``), not by their order.
4. **α** (``pipeline.alpha.search_alpha``): the method's grid (or ``merge.alpha_grid``), searched
   by ``merge.alpha_search`` and widened up to the method's ``alpha_bounds`` on the mean
   validation accuracy over the tasks of a fixed seeded subset of each validation split
   (``ALPHA_SUBSET`` examples per task, drawn with ``numpy.random.default_rng(cfg.seed)``; the
   whole split when it is no larger), then confirmed on the whole validation splits: the
   plateau of the subset's curve re-scored at a few spaced points, then a climb on the 0.05
   lattice (``pipeline.alpha``; ``ValidationScores`` reuses the subset's counts). Every
   evaluation goes through the study's one evaluation path (``ctx.evaluator()``), which keeps
   each split's finished inputs after their first pass. ``fixed`` and single-point grids
   evaluate one α on the whole splits.
5. **Store**: the merged encoder as ``merged/<id>`` (with ``merge.keep_weights: false`` it is
   evaluated on the test splits at once, as the evaluate stage would, and its weights file removed;
   ``rebuild_merged`` makes it again), its entry recording the resolved method
   parameters (``params``) and PACT parameters (``pact_params``) separately, α, the search
   (``alpha_search``: the ``AlphaSearch.record`` form), the validation score (``metrics.val_avg``)
   and timings; the core's diagnostics go to ``diagnostics/<id>.json``.

Test accuracy is not measured here: the evaluate stage (``stages.evaluate``) evaluates every
model of the study, merges included, on the test split. A merge already in the store is never
recomputed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

from pactmerge.errors import ConfigError, StageError
from pactmerge.fileio import write_json_atomic
from pactmerge.pipeline.merge_plan import (  # noqa: F401  (re-exported: the stage's plan)
    PlannedMerge, expand_methods, plan_merges, resolved_params)
from pactmerge.pipeline.rundir import verify_stored

log = logging.getLogger(__name__)

ALPHA_SUBSET = 128  # validation examples per task of the α search's first pass


class ValidationScores:
    """Mean validation accuracy of ``state_at(alpha)`` over the run's tasks, on a seeded subset of each
    task's validation split (``subset``) or on the whole split (``full``).

    A full score of an α already scored on the subset evaluates only the subset's complement and
    adds the counts, and a full score of a new α also records its subset score, so each example
    is classified at most once per α. The per-task accuracy is exact: correct / examples.
    """

    def __init__(self, evaluator: Any, state_at: Any, size: int) -> None:
        self.evaluator, self.state_at, self.size = evaluator, state_at, size
        tasks = evaluator.ctx.task_keys
        self.sizes = {t: (evaluator.count(t, "val", size), evaluator.count(t, "val", size, True)) for t in tasks}
        self.has_rest = any(rest for _, rest in self.sizes.values())
        self._sub: dict[float, dict[str, int]] = {}  # α -> correct predictions per task on the subset

    def _correct(self, alpha: float, complement: bool) -> dict[str, int]:
        preds = self.evaluator.predictions(self.state_at(alpha), split="val", subset=self.size, complement=complement)
        return {t: int((p == y).sum()) for t, (p, y) in preds.items()}

    def subset(self, alpha: float) -> float:
        if alpha not in self._sub:
            self._sub[alpha] = self._correct(alpha, False)
        return sum(c / self.sizes[t][0] for t, c in self._sub[alpha].items()) / len(self.sizes)

    def full(self, alpha: float) -> float:
        sub = self._sub.get(alpha)
        if sub is None:
            sub = self._sub[alpha] = self._correct(alpha, False)
        rest = self._correct(alpha, True) if self.has_rest else {}
        return sum((sub[t] + rest.get(t, 0)) / (n + r) for t, (n, r) in self.sizes.items()) / len(self.sizes)


# -- 2. inputs ---------------------------------------------------------------------------------------
@dataclass
class MergeInputs:
    pretrained_path: str
    finetuned_paths: list[str]
    pretrained: dict[str, Any]  # the pre-trained encoder state (CPU tensors)
    task_ids: list[str]  # sha256 of each fine-tuned file: the models' identities


def core_kwargs(planned: PlannedMerge, inputs: MergeInputs | None = None, pact_cache: Any = None) -> dict[str, Any]:
    """``params``, ``pact``, ``pact_cache`` and ``task_ids`` of ``merge_files`` for ``planned``."""
    kwargs: dict[str, Any] = {"params": dict(planned.params)}
    if planned.pact is not None:
        kwargs["pact"] = dict(planned.pact)
        kwargs["pact_cache"] = pact_cache
    if inputs is not None:
        kwargs["task_ids"] = list(inputs.task_ids)  # seeds of randomized SVDs follow the models, not their order
    return kwargs


def merge_planned(ctx: Any, planned: PlannedMerge, inputs: MergeInputs, pact_cache: Any = None) -> Any:
    """``planned``'s merge of ``inputs`` as the stage builds it (``merging.merge_files`` under the config's
    key policy and device): the ``MergeResult``, before α."""
    from pactmerge.merging import KeyPolicy, merge_files

    m = ctx.cfg.merge
    return merge_files(inputs.pretrained_path, inputs.finetuned_paths, planned.method,
                       key_policy=KeyPolicy(conv_as_matrix=m.conv_as_matrix, exclude=tuple(m.exclude)),
                       device=m.device, **core_kwargs(planned, inputs, pact_cache))


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
    verify_stored(store, names)  # a changed file is named with the commands that redo it
    paths = [str(store.path(n)) for n in names]
    ids = [store.entry(n)["sha256"] for n in names[1:]]
    return MergeInputs(paths[0], paths[1:], store.load_state("pretrained"), ids)


# -- 3 + 4 + 5. the stage -------------------------------------------------------------------------------
def stored_results(ctx: Any, merges: Sequence[PlannedMerge]) -> dict[str, dict[str, Any]]:
    """id -> manifest entry of every planned merge already in the store."""
    return {p.id: ctx.store.entry(f"merged/{p.id}") for p in merges if ctx.store.has(f"merged/{p.id}")}


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

    from pactmerge.merging import PACTCache

    cache = PACTCache() if any(p.pact is not None for p in todo) else None
    with tqdm(todo, desc="merging", unit="merge") as bar:
        for planned in bar:
            bar.set_postfix_str(planned.id)
            results[planned.id] = _build_one(ctx, planned, inputs, cache)
            if built is not None:
                built.append(planned.id)
    return {p.id: results[p.id] for p in merges}


def alpha_setup(ctx: Any, method: str, default_alpha: float) -> dict[str, Any]:
    """The α search of ``method`` under ``ctx``'s config: ``grid``, ``mode``, ``bounds``, ``fixed``."""
    from pactmerge.merging import get_method

    spec = get_method(method)
    grid = list(spec.alpha_grid) or [default_alpha]
    m = ctx.cfg.merge
    if m.alpha_grid and len(grid) > 1:  # weight averaging keeps its single α = 1
        grid = list(m.alpha_grid)
    bounds = tuple(getattr(spec, "alpha_bounds", (min(grid), max(grid))))
    return {"grid": grid, "mode": m.alpha_search if len(grid) > 1 else "fixed", "bounds": bounds,
            "fixed": m.alpha if m.alpha is not None else default_alpha}


def _build_one(ctx: Any, planned: PlannedMerge, inputs: MergeInputs, cache: Any) -> dict[str, Any]:
    from pactmerge.pipeline.alpha import search_alpha

    store = ctx.store
    t0 = time.perf_counter()
    res = merge_planned(ctx, planned, inputs, cache)
    merge_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    setup = alpha_setup(ctx, planned.method, res.default_alpha)
    val = ValidationScores(ctx.evaluator(), lambda a: res.apply(inputs.pretrained, a), ALPHA_SUBSET)
    search = search_alpha(val.full, setup["grid"], setup["mode"], bounds=setup["bounds"], fixed=setup["fixed"],
                          first_pass=val.subset if val.has_rest else None)
    merged = res.apply(inputs.pretrained, search.chosen)
    alpha_s = time.perf_counter() - t1

    diag_path = store.root / "diagnostics" / f"{planned.id.replace('+', '_')}.json"
    write_json_atomic(diag_path, res.diagnostics)
    meta = {
        "kind": "merged",
        "method": res.method,
        "params": res.params,
        "pact_params": res.pact_params,
        "alpha": search.chosen,
        "alpha_search": {**search.record(), "subset_per_task": ALPHA_SUBSET if val.has_rest else None},
        "metrics": {"val_avg": search.score},
        "eval_precision": ctx.evaluator().precision,
        "diagnostics_file": str(diag_path.relative_to(store.root)),
        "timings": {"merge_s": merge_s, "alpha_s": alpha_s, **res.timings},
    }
    store.save_state(f"merged/{planned.id}", merged, meta)
    if not ctx.cfg.merge.keep_weights:  # test it now, while its weights are at hand, then drop them
        from pactmerge.pipeline.stages import drop_merged_weights, evaluate_entry

        evaluate_entry(ctx, f"merged/{planned.id}", ctx.task_keys, merged)
        drop_merged_weights(ctx, f"merged/{planned.id}")
    log.info("merged %s: alpha=%.2f of [%g, %g]%s%s (%d evaluations), val avg %.2f%%, %.1f s", planned.id,
             search.chosen, *search.range, ", widened" if search.widened else "",
             ", at its hard bound" if search.at_limit else "", search.evaluations, 100 * search.score,
             merge_s + alpha_s)
    return store.entry(f"merged/{planned.id}")


# -- merges whose weights were not kept (merge.keep_weights: false) ---------------------------------------
def rebuildable(ctx: Any, name: str) -> bool:
    """Whether ``merged/<id>`` is one of the study's planned merges (not an AdaMerging entry, whose
    coefficients were trained): the merges whose weights ``rebuild_merged`` can make again."""
    return name.startswith("merged/") and name.split("/", 1)[1] in {p.id for p in plan_merges(ctx.cfg.merge)}


def rebuild_merged(ctx: Any, name: str) -> dict[str, Any]:
    """The weights of ``merged/<id>`` made again: its merge of the stored fine-tunes at its recorded α.

    The bytes are checked against the entry's sha256; another version of a library or a GPU can give
    other last bits, which is logged (the rebuilt weights are returned all the same)."""
    import hashlib

    from safetensors.torch import save

    from pactmerge.errors import CheckpointError

    if not rebuildable(ctx, name):
        raise CheckpointError(f"{name}: not one of this study's planned merges, so its weights cannot be made again")
    planned = {p.id: p for p in plan_merges(ctx.cfg.merge)}[name.split("/", 1)[1]]
    entry = ctx.store.entry(name)
    inputs = check_inputs(ctx)
    state = merge_planned(ctx, planned, inputs).apply(inputs.pretrained, float(entry["alpha"]))
    flat = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    digest = hashlib.sha256(save(flat, metadata={"pactmerge_name": name})).hexdigest()
    if digest != entry["sha256"]:
        log.warning("%s: the weights made again differ from the recorded ones in the last bits (sha256 %s..., "
                    "recorded %s...): another library version or device than the run's", name, digest[:12],
                    entry["sha256"][:12])
    else:
        log.info("%s: weights made again from the fine-tunes at alpha %g (sha256 as recorded)", name, entry["alpha"])
    return flat


def load_entry_state(ctx: Any, name: str) -> dict[str, Any]:
    """Entry ``name``'s weights: from its file, or made again when they were not kept."""
    if ctx.store.weights_kept(name):
        return ctx.store.load_state(name)
    return rebuild_merged(ctx, name)
