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
   by ``merge.alpha_search`` and widened up to the method's ``alpha_bounds``, each α scored by
   the mean validation accuracy over the tasks (``ctx.accuracies(state, split="val")``: the
   study's one evaluation path, which keeps each validation split's finished inputs after the
   first pass). ``fixed`` and single-point grids evaluate one α.
5. **Store**: the merged encoder as ``merged/<id>``, its entry recording the resolved method
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

    from pactmerge.merging import KeyPolicy, PACTCache

    m = ctx.cfg.merge
    key_policy = KeyPolicy(conv_as_matrix=m.conv_as_matrix, exclude=tuple(m.exclude))
    cache = PACTCache() if any(p.pact is not None for p in todo) else None
    with tqdm(todo, desc="merging", unit="merge") as bar:
        for planned in bar:
            bar.set_postfix_str(planned.id)
            results[planned.id] = _build_one(ctx, planned, inputs, key_policy, cache)
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


def _build_one(ctx: Any, planned: PlannedMerge, inputs: MergeInputs, key_policy: Any, cache: Any) -> dict[str, Any]:
    from pactmerge.merging import merge_files
    from pactmerge.pipeline.alpha import search_alpha

    m, store = ctx.cfg.merge, ctx.store
    t0 = time.perf_counter()
    res = merge_files(inputs.pretrained_path, inputs.finetuned_paths, planned.method, key_policy=key_policy,
                      device=m.device, **core_kwargs(planned, inputs, cache))
    merge_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    setup = alpha_setup(ctx, planned.method, res.default_alpha)

    def score(alpha: float) -> float:
        accs = ctx.accuracies(res.apply(inputs.pretrained, alpha), split="val")
        return sum(accs.values()) / len(accs)

    search = search_alpha(score, setup["grid"], setup["mode"], bounds=setup["bounds"], fixed=setup["fixed"])
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
        "alpha_search": search.record(),
        "metrics": {"val_avg": search.score},
        "diagnostics_file": str(diag_path.relative_to(store.root)),
        "timings": {"merge_s": merge_s, "alpha_s": alpha_s, **res.timings},
    }
    store.save_state(f"merged/{planned.id}", merged, meta)
    log.info("merged %s: alpha=%.2f of [%g, %g]%s%s (%d evaluations), val avg %.2f%%, %.1f s", planned.id,
             search.chosen, *search.range, ", widened" if search.widened else "",
             ", at its hard bound" if search.at_limit else "", search.evaluations, 100 * search.score,
             merge_s + alpha_s)
    return store.entry(f"merged/{planned.id}")
