"""The method registry: a plain dict from name to ``MethodSpec``, ``pact+`` composition, alpha grids."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

from pactmerge.errors import MergeError
from pactmerge.merging.methods import (
    breadcrumbs, consensus, dare, iso_c, iso_cts, magmax, task_arithmetic, ties, tsvm, weight_averaging,
)
from pactmerge.merging.pact import PACTConfig
from pactmerge.merging.params import param_names, parse_params
from pactmerge.merging.spec import MethodSpec

METHODS: dict[str, MethodSpec] = {
    "weight_averaging": weight_averaging.SPEC,
    "task_arithmetic": task_arithmetic.SPEC,
    "ties": ties.SPEC,
    "tsvm": tsvm.SPEC,
    "iso_c": iso_c.SPEC,
    "iso_cts": iso_cts.SPEC,
    "dare": dare.SPEC,
    "breadcrumbs": breadcrumbs.SPEC,
    "consensus": consensus.SPEC,
    "magmax": magmax.SPEC,
}

ALIASES = {"ta": "task_arithmetic", "tsv_m": "tsvm", "tsv-m": "tsvm", "iso-c": "iso_c", "iso-cts": "iso_cts",
           "model_breadcrumbs": "breadcrumbs", "tall_masks": "consensus", "tall": "consensus"}

PACT_PREFIX = "pact+"


def available_methods() -> list[str]:
    """Every method name: the base methods and ``pact+<name>`` for each."""
    return list(METHODS) + [PACT_PREFIX + name for name in METHODS]


def get_method(name: str) -> MethodSpec:
    """The spec of ``name`` (aliases accepted); an unknown name is a ``MergeError`` listing the known ones."""
    raw = name.strip().lower()
    pact = raw.startswith(PACT_PREFIX)
    base = raw[len(PACT_PREFIX) :] if pact else raw
    base = ALIASES.get(base, base)
    if base not in METHODS:
        known = available_methods()
        close = difflib.get_close_matches(raw, known + list(ALIASES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise MergeError(f"unknown merge method {name!r}; known methods: {', '.join(known)}.{hint}")
    spec = METHODS[base]
    if pact:
        return dataclasses.replace(spec, name=PACT_PREFIX + base, pact=True, base=base)
    return dataclasses.replace(spec, base=base)


PACT_NAMES = frozenset(param_names(PACTConfig))


def resolve_params(
    spec: MethodSpec, params: Mapping[str, Any] | None, pact: PACTConfig | Mapping[str, Any] | None = None
) -> tuple[Any, PACTConfig | None, dict, dict | None]:
    """(method params, PACT config or None, resolved method dict, resolved PACT dict or None).

    Two namespaces. ``params``: the method's own parameters and the merge-wide SVD options
    (``svd``, ``oversample``, ``power_iters``, ``seed``), which PACT shares. ``pact``: PACT's
    parameters, a ``PACTConfig`` or a mapping; also accepted nested as ``params["pact"]``.
    A PACT parameter at the top level of ``params``, or PACT parameters for a method without
    ``pact+``, is a ``MergeError`` naming the key and where it belongs. An empty ``pact``
    mapping is no PACT parameter at all (accepted for any method).
    """
    params = dict(params or {})
    nested = params.pop("pact", None)
    if nested is not None and pact is not None:
        raise MergeError(
            f"method {spec.name!r}: PACT parameters given twice (pact= and params['pact']); give them once"
        )
    if nested is not None:
        if not isinstance(nested, (Mapping, PACTConfig)):
            raise MergeError(
                f"method {spec.name!r}: params['pact'] must be a mapping of PACT parameters, got {type(nested).__name__}"
            )
        pact = nested
    own = set(param_names(spec.params_cls))
    for key in params:
        if key in PACT_NAMES and key not in own:
            where = "pact" if spec.pact else f"pact, and use a pact+ method (e.g. 'pact+{spec.base}')"
            raise MergeError(
                f"method {spec.name!r}: parameter {key!r} is a PACT parameter, not one of {spec.base!r}; "
                f"put it under {where}: pact={{{key!r}: ...}} or params={{'pact': {{{key!r}: ...}}}}"
            )
    extra = ["pact"] if spec.pact else []
    method_params = parse_params(spec.params_cls, params, spec.name, extra_valid=extra)
    resolved = dataclasses.asdict(method_params)
    if not spec.pact:
        if isinstance(pact, PACTConfig) or (pact is not None and len(pact) > 0):
            raise MergeError(
                f"method {spec.name!r} has no PACT step, so PACT parameters do not apply; "
                f"use 'pact+{spec.base}' or drop the PACT parameters"
            )
        return method_params, None, resolved, None
    if isinstance(pact, PACTConfig):
        pact_cfg = pact
        try:
            pact_cfg.check()
        except MergeError as exc:
            raise MergeError(f"method {spec.name!r}: PACT: {exc}") from None
    else:
        pact_cfg = parse_params(PACTConfig, pact, spec.name, label=f"method {spec.name!r}, PACT")
    return method_params, pact_cfg, resolved, dataclasses.asdict(pact_cfg)


def alpha_grid(method: str) -> list[float]:
    """The method's default α grid (``MethodSpec.alpha_grid``; ``pact+X`` uses X's grid)."""
    return list(get_method(method).alpha_grid)
