"""Typed coercion of user-given values (YAML, ``KEY=VALUE`` flags, Python mappings).

One coercer for every place that turns loosely typed input into the fields of a typed
dataclass: the study config and the merge methods' parameters. ``coerce`` checks a value
against a type hint and returns it in the hinted type, or raises ``ValueError`` whose message
starts with ``where`` (e.g. ``"method 'ties': parameter 'k'"``); callers wrap that in their own
error class (``ConfigError``, ``MergeError``). ``parse_key_values`` reads ``KEY=VALUE`` strings.

Supported hints: ``Any``, ``Literal[...]``, ``bool``, ``int``, ``float``, ``str``, unions
(``X | None``), ``list[X]``, ``tuple[X, ...]`` / ``tuple[X, Y]``, ``dict[str, X]``, and any other
class by ``isinstance``. Dataclass hints are the caller's business: pass ``dataclass_hook``
(called as ``hook(cls, value, where)``) to build them, otherwise an instance is required.

Rules: ``bool`` is never an ``int`` or ``float``; an ``int`` is accepted for ``float``; for
``float`` a string that spells a decimal number (``"1e-5"``, which YAML 1.1 reads as a string)
is accepted too. NaN and infinity are valid floats here: callers that need finite values
check with ``finite_float``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Callable, Iterable, Literal, Mapping

__all__ = ["coerce", "finite_float", "parse_key_values"]

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def coerce(
    value: Any,
    hint: Any,
    where: str,
    *,
    dataclass_hook: Callable[[type, Any, str], Any] | None = None,
) -> Any:
    """``value`` checked against (and converted to) the type ``hint``; ``ValueError`` naming ``where``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where, dataclass_hook=dataclass_hook)
            except ValueError:
                continue
        raise ValueError(f"{where}: expects {_type_name(hint)}, got {_show(value)}")
    if origin is Literal:
        # Literal[True] must not accept 1; compare type and value
        if not any(value == c and type(value) is type(c) for c in args):
            raise ValueError(f"{where}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if dataclass_hook is not None:
            return dataclass_hook(hint, value, where)
        if not isinstance(value, hint):
            raise ValueError(f"{where}: expects a {hint.__name__}, got {_show(value)}")
        return value
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expects a list, got {_show(value)}")
        item = args[0] if args else Any
        return [coerce(v, item, f"{where}[{i}]", dataclass_hook=dataclass_hook) for i, v in enumerate(value)]
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expects a list, got {_show(value)}")
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            return tuple(coerce(v, item, f"{where}[{i}]", dataclass_hook=dataclass_hook) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{where}: expects {len(args)} items, got {len(value)}: {value!r}")
        return tuple(coerce(v, a, f"{where}[{i}]", dataclass_hook=dataclass_hook) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expects a mapping, got {_show(value)}")
        key_hint, val_hint = (args if len(args) == 2 else (Any, Any))
        out = {}
        for k, v in value.items():
            if key_hint is str and not isinstance(k, str):
                raise ValueError(f"{where}: keys must be strings, got {_show(k)}")
            out[k] = coerce(v, val_hint, f"{where}.{k}", dataclass_hook=dataclass_hook)
        return out
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expects true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expects an integer, got {_show(value)}")
        return int(value)
    if hint is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expects a number, got {_show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expects a string, got {_show(value)}")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ValueError(f"{where}: expects {_type_name(hint)}, got {_show(value)}")
    return value


def finite_float(value: Any, where: str) -> float:
    """``value`` as a finite float (ints accepted, bools not); ``ValueError`` naming ``where`` otherwise."""
    x = coerce(value, float, where)
    if not math.isfinite(x):
        raise ValueError(f"{where}: must be a finite number, got {x!r}")
    return x


def parse_key_values(items: Iterable[str], where: str) -> dict[str, Any]:
    """``["K=15", "protect=self"]`` -> ``{"K": 15, "protect": "self"}``; values read as YAML scalars.

    ``ValueError`` naming ``where`` and the bad item for an item without ``=``, an empty key, a
    key given twice or a value that is not valid YAML.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{where} {item!r}: expected KEY=VALUE")
        if key in out:
            raise ValueError(f"{where} {item!r}: key {key!r} is given twice")
        try:
            out[key] = yaml.safe_load(raw)  # "KEY=" gives None
        except yaml.YAMLError as exc:
            reason = str(exc).splitlines()[0]
            raise ValueError(f"{where} {item!r}: the value is not valid YAML ({reason})") from None
    return out
