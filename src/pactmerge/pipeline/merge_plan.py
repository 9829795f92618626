"""The merges of a study, planned from its config: ``PlannedMerge`` entries and their parameters.

``merge.methods`` (or ``all``: every base method of the registry) × ``merge.pact`` variants
(``none``, ``exact``, ``randomized``) -> ``PlannedMerge`` entries. Parameters are routed by
namespace: ``merge.params`` reach every merge (method parameters and the merge-wide SVD options
``svd``, ``oversample``, ``power_iters``, ``seed``); ``merge.pact_params`` reach PACT only (the
``pact=`` keyword of ``merge_files``); ``merge.method_params.<m>`` reach ``m`` and ``pact+m``
alike; ``merge.method_params["pact+m"]`` reach ``pact+m`` only (its PACT keys to PACT, the rest
to the method).

The entries each stage of a study produces (``stage_entries``) and those whose test accuracy
the evaluation records (``evaluation_entries``) are defined here too, once, for the stages,
``pactmerge run --dry-run`` and ``pactmerge status``.

Torch-free: the method registry (which imports torch) is consulted only for ``methods: all``
and for PACT's own keys given flat in ``method_params["pact+m"]``; ``pactmerge status`` reads
the merge ids its claim recorded (``rundir``) instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass(frozen=True)
class PlannedMerge:
    """One merged model to build.

    ``method``: a registry name (``pact+`` prefix included); ``params``: the method's parameters
    plus the SVD options; ``pact``: PACT's own parameters (None for a method without PACT).
    """

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    pact: dict[str, Any] | None = None
    svd: str = "exact"

    @property
    def id(self) -> str:
        return self.method + ("-rsvd" if self.svd == "randomized" else "")


def _registry_methods() -> list[str]:
    from pactmerge.merging import available_methods

    return list(available_methods())


def expand_methods(methods: str | Sequence[str]) -> list[str]:
    """``"all"`` (or a list holding it) -> every base method of the registry, in registry order; else the list."""
    names = [methods] if isinstance(methods, str) else list(methods)
    out: list[str] = []
    for name in names:
        expanded = [m for m in _registry_methods() if "+" not in m] if name == "all" else [name]
        out += [m for m in expanded if m not in out]
    return out


def _pact_field_names() -> set[str]:
    from pactmerge.merging import PACTConfig

    return {f.name for f in dataclasses.fields(PACTConfig)}


def plan_merges(merge_cfg: Any) -> list[PlannedMerge]:
    """The merges of a ``MergeConfig`` (see the module docstring for the routing of parameters).

    Methods without PACT come first, then the PACT forms grouped by SVD variant, so that the
    merges sharing PACT's cleaned task vectors run one after another.
    """
    method_params = dict(merge_cfg.method_params or {})
    plain, with_pact = [], []
    for m in expand_methods(merge_cfg.methods):
        base = {**dict(merge_cfg.params or {}), **dict(method_params.get(m, {}))}
        for variant in merge_cfg.pact:
            if variant == "none":
                plain.append(PlannedMerge(m, base, None, svd=str(base.get("svd", "exact"))))
                continue
            own = dict(method_params.get(f"pact+{m}", {}))
            pact = {**dict(merge_cfg.pact_params or {}), **dict(own.pop("pact", {}) or {})}
            if own:
                pact_fields = _pact_field_names()
                pact.update({k: own.pop(k) for k in list(own) if k in pact_fields})
            params = {**base, **own, "svd": variant}
            with_pact.append(PlannedMerge(f"pact+{m}", params, pact, svd=variant))
    order = {v: i for i, v in enumerate(merge_cfg.pact)}
    return plain + sorted(with_pact, key=lambda p: order[p.svd])


def resolved_params(planned: PlannedMerge) -> dict[str, Any]:
    """The method and PACT parameters of ``planned`` as the core resolves them (defaults filled in),
    without merging: ``{"params": {...}, "pact_params": {...} | None}``. Errors are the core's ``MergeError``."""
    from pactmerge.merging import get_method
    from pactmerge.merging.registry import resolve_params

    _, _, params, pact = resolve_params(get_method(planned.method), planned.params, planned.pact)
    return {"params": params, "pact_params": pact}


# -- the entries of a study's stages -------------------------------------------------------------------
# models trained besides the merges, each with its flag in ComparisonsConfig, its stage
# stages.finetune_<name> (listed in study.stage_plan) and its store entry <name>
COMPARISONS = ("joint", "sequential")
ADAMERGING_IDS = {"none": "adamerging", "exact": "pact+adamerging", "randomized": "pact+adamerging-rsvd"}


def adamerging_ids(merge_cfg: Any) -> list[str]:
    """The merged entries (``merged/<id>``) that ``merge.adamerging.variants`` ask for (built by the
    ``adamerging`` stage, ``pipeline.adamerging``)."""
    ada = getattr(merge_cfg, "adamerging", None)
    return [ADAMERGING_IDS[v] for v in (ada.variants if ada is not None else [])]


def stage_entries(cfg: Any, task_keys: Sequence[str], merge_ids: Sequence[str] | None = None
                  ) -> list[tuple[str, list[str]]]:
    """(stage, the store entries it produces) of a study in the order it runs them: ``prepare``,
    ``finetune_individual``, ``finetune_joint`` / ``finetune_sequential`` (when compared) and ``merge``.

    ``cfg`` is a ``RunConfig``; ``merge_ids`` the merge ids when known (recorded in ``run.json``),
    else they are planned from ``cfg.merge``.
    """
    keys = list(task_keys)
    ids = [p.id for p in plan_merges(cfg.merge)] if merge_ids is None else list(merge_ids)
    plan = [("prepare", ["pretrained"] + [f"heads/{t}" for t in keys]),
            ("finetune_individual", [f"finetuned/{t}" for t in keys])]
    plan += [(f"finetune_{n}", [n]) for n in COMPARISONS if getattr(cfg.comparisons, n)]
    if getattr(cfg, "pool", None) is not None:  # one import stage instead of the fine-tunes
        plan[1:] = [("import", [e for _, entries in plan[1:] for e in entries])]
    plan.append(("merge", [f"merged/{i}" for i in ids]))
    ada = adamerging_ids(cfg.merge)
    return plan + ([("adamerging", [f"merged/{i}" for i in ada])] if ada else [])


def evaluation_entries(cfg: Any, task_keys: Sequence[str], merge_ids: Sequence[str] | None = None
                       ) -> list[tuple[str, list[str]]]:
    """(store entry, tasks) of every model whose test accuracy the report shows, merges included
    (``merge_ids`` when known, else planned from ``cfg.merge``, as in ``stage_entries``)."""
    keys = list(task_keys)
    plan: list[tuple[str, list[str]]] = [("pretrained", keys)] if cfg.comparisons.zero_shot else []
    plan += [(f"finetuned/{t}", [t]) for t in keys]
    plan += [(n, keys) for n in COMPARISONS if getattr(cfg.comparisons, n)]
    ids = [p.id for p in plan_merges(cfg.merge)] if merge_ids is None else list(merge_ids)
    return plan + [(f"merged/{i}", keys) for i in [*ids, *adamerging_ids(cfg.merge)]]
