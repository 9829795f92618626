"""Typed hyper-parameters and their validation.

Every method has a frozen dataclass of hyper-parameters with defaults; a user's ``params``
mapping is checked against it: an unknown key or a value of the wrong type is a
``MergeError`` that names the key and lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from pactmerge.coerce import coerce
from pactmerge.errors import MergeError

MAX_POWER_ITERS = 100  # more power iterations than this gain nothing and only cost time
MAX_OVERSAMPLE = 1000
SEED_LIMIT = 2**63  # seeds are torch generator seeds: 0 <= seed < 2**63


@dataclass(frozen=True)
class SVDOptions:
    """How truncated SVDs are computed where the specification allows a randomized one.

    ``svd="exact"``: exact decompositions (float64 Gram eigen-decompositions, see ``linalg``).
    ``svd="randomized"``: Halko-Martinsson-Tropp with ``oversample`` extra columns,
    ``power_iters`` power iterations, Gaussian test matrices drawn from ``seed``.
    """

    svd: Literal["exact", "randomized"] = "exact"
    oversample: int = 10
    power_iters: int = 2
    seed: int = 0

    def check(self) -> None:
        if not 0 <= self.oversample <= MAX_OVERSAMPLE:
            raise MergeError(f"oversample must be in [0, {MAX_OVERSAMPLE}], got {self.oversample}")
        if not 0 <= self.power_iters <= MAX_POWER_ITERS:
            raise MergeError(f"power_iters must be in [0, {MAX_POWER_ITERS}], got {self.power_iters}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise MergeError(f"seed must be in [0, 2**63), got {self.seed}")


def svd_options(params: Any) -> SVDOptions:
    """The merge-wide ``SVDOptions`` part of a method's parameters (every method's ``Params`` extends it)."""
    return SVDOptions(**{name: getattr(params, name) for name in param_names(SVDOptions)})


def param_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def parse_params(
    cls: type, params: Mapping[str, Any] | None, method: str, extra_valid: list[str] = (), label: str | None = None
) -> Any:
    """Build ``cls`` from the keys of ``params`` that are its fields; reject unknown keys.

    ``extra_valid`` names keys that belong to another dataclass parsed from the same mapping
    (PACT's keys for a ``pact+`` method): they are not errors here.
    """
    where = label or f"method {method!r}"
    if params is not None and not isinstance(params, Mapping):
        raise MergeError(f"{where}: parameters must be a mapping of name to value, got {type(params).__name__}")
    params = dict(params or {})
    hints = typing.get_type_hints(cls)
    names = param_names(cls)
    valid = sorted(set(names) | set(extra_valid))
    unknown = [k for k in params if k not in valid]
    if unknown:
        raise MergeError(
            f"{where}: unknown parameter {unknown[0]!r}; valid parameters are: {', '.join(valid)}"
        )
    values = {}
    for name in names:
        if name in params:
            try:
                values[name] = coerce(params[name], hints[name], f"{where}: parameter {name!r}")
            except ValueError as exc:
                raise MergeError(str(exc)) from None
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except MergeError as exc:
            raise MergeError(f"{where}: {exc}") from None
    return obj
