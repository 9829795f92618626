"""Reading the run config: YAML files, ``--set`` overrides, and typed dataclasses from plain mappings.

Strict: an unknown key or a value of the wrong type is a ``ConfigError`` naming the dotted key,
the file and the expected type; a file that is not UTF-8 text or not (safe) YAML, and a
``--set`` value that is not, are named too. Torch-free (``pactmerge status`` reads configs).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from pactmerge.coerce import coerce
from pactmerge.errors import ConfigError


def read_yaml_file(src: Path) -> Any:
    """The YAML document of config file ``src`` (``{}`` when empty); ``ConfigError`` naming the file when it
    is not UTF-8 text (a weights file given as a config) or not valid (also: unsafe) YAML."""
    try:
        text = src.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{src}: not a YAML config: it is not UTF-8 text (at byte {exc.start}); give a "
                          "study config file (.yaml)") from None
    except OSError as exc:
        raise ConfigError(f"{src}: cannot be read ({exc.strerror or exc})") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{src}: not valid YAML ({exc})") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """Set each ``dotted.key=value`` of ``overrides`` in ``raw`` (value read as YAML, sections made as needed)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: the value of {key.strip()} is not valid YAML ({exc}); quote text "
                              f"values, e.g. --set '{key.strip()}=\"...\"'") from None


def to_plain(obj: Any) -> Any:
    """``obj`` (dataclasses, lists, mappings, paths) as plain JSON-able values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_dict(cls: type, data: Mapping[str, Any], *, where: str = "config", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, checking every key and type."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: {prefix or 'top level'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{where}: unknown key {dotted!r}; known keys here: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(hints[key], value, where=where, key=dotted)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: section {prefix.rstrip('.') or 'top level'}: {exc}") from exc


def _coerce(tp: Any, value: Any, *, where: str, key: str) -> Any:
    """``value`` as type ``tp`` through the shared coercer (``pactmerge.coerce``); nested sections
    are read by ``from_dict``. Errors are ``ConfigError`` naming the file and the dotted key."""
    def section(cls: type, data: Any, _where: str) -> Any:
        return from_dict(cls, data or {}, where=where, prefix=f"{key}.")

    try:
        return coerce(value, tp, f"{where}: {key}", dataclass_hook=section)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return value
