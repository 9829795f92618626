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

from pactmerge.errors import MergeError


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
        if self.oversample < 0 or self.power_iters < 0:
            raise MergeError("oversample and power_iters must be >= 0")


def param_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def parse_params(cls: type, params: Mapping[str, Any] | None, method: str, extra_valid: list[str] = ()) -> Any:
    """Build ``cls`` from the keys of ``params`` that are its fields; reject unknown keys.

    ``extra_valid`` names keys that belong to another dataclass parsed from the same mapping
    (PACT's keys for a ``pact+`` method): they are not errors here.
    """
    params = dict(params or {})
    hints = typing.get_type_hints(cls)
    names = param_names(cls)
    valid = sorted(set(names) | set(extra_valid))
    unknown = [k for k in params if k not in valid]
    if unknown:
        raise MergeError(
            f"method {method!r}: unknown parameter {unknown[0]!r}; valid parameters are: {', '.join(valid)}"
        )
    values = {}
    for name in names:
        if name in params:
            values[name] = _coerce(params[name], hints[name], name, method)
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except MergeError as exc:
            raise MergeError(f"method {method!r}: {exc}") from None
    return obj


def _coerce(value: Any, hint: Any, name: str, method: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise MergeError(
                f"method {method!r}: parameter {name!r} must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise MergeError(f"method {method!r}: parameter {name!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MergeError(f"method {method!r}: parameter {name!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MergeError(f"method {method!r}: parameter {name!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise MergeError(f"method {method!r}: parameter {name!r} must be a string, got {value!r}")
        return value
    return value
