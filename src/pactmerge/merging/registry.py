"""The method registry: a plain dict from name to ``MethodSpec``, ``pact+`` composition, alpha grids."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

from pactmerge.errors import MergeError
from pactmerge.merging.methods import iso_c, iso_cts, task_arithmetic, ties, tsvm, weight_averaging
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
}

ALIASES = {"ta": "task_arithmetic", "tsv_m": "tsvm", "tsv-m": "tsvm", "iso-c": "iso_c", "iso-cts": "iso_cts"}

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


def resolve_params(spec: MethodSpec, params: Mapping[str, Any] | None) -> tuple[Any, PACTConfig | None, dict]:
    """(method params, PACT config or None, the resolved JSON-able dict) for ``spec``.

    Under ``pact+`` one mapping holds both: the shared SVD options apply to PACT and the method.
    """
    pact_names = param_names(PACTConfig) if spec.pact else []
    method_params = parse_params(spec.params_cls, params, spec.name, extra_valid=pact_names)
    resolved = dataclasses.asdict(method_params)
    pact_cfg = None
    if spec.pact:
        pact_cfg = parse_params(PACTConfig, params, spec.name, extra_valid=param_names(spec.params_cls))
        resolved.update(dataclasses.asdict(pact_cfg))
    return method_params, pact_cfg, resolved


def alpha_grid(method: str) -> list[float]:
    """Scaling coefficients tried on validation data: 0.05..1.0 step 0.05 for TA and TIES,
    [1.0] for weight averaging, 0.0..2.0 step 0.1 otherwise (``pact+`` forms as their base)."""
    base = get_method(method).base
    if base == "weight_averaging":
        return [1.0]
    if base in ("task_arithmetic", "ties"):
        return [round(0.05 * i, 10) for i in range(1, 21)]
    return [round(0.1 * i, 10) for i in range(0, 21)]
