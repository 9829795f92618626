"""Merge-parameter flags built from the merging core's parameter dataclasses, for every command
that takes merge parameters (``merge``; ``transfer`` and ``analyze`` for PACT's).

One namespace each: ``--pact-<field>`` from ``PACTConfig`` (``--pact-K``, ``--pact-k``,
``--pact-protect``, ...), ``--<method>-<field>`` from each method's ``Params`` (``--ties-k``,
``--iso-cts-f``, ...), and the merge-wide SVD options ``--svd``, ``--oversample``,
``--power-iters``, ``--seed`` from ``SVDOptions``. With ``refuse_bare_names``, a bare field name
(``--k``, ``--K``) is refused with the prefixed flags that carry it. Values are read as YAML
scalars and coerced to the field's type (``pactmerge.coerce``); ``collect_params`` returns the
``params`` and ``pact`` mappings the core takes.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from pactmerge.errors import ConfigError

PACT_NS = "pact"  # namespace of PACTConfig's fields
SVD_NS = "svd"  # namespace of the merge-wide SVDOptions


@dataclass(frozen=True)
class _Flag:
    """One hyper-parameter flag derived from a dataclass field."""

    flag: str  # "--pact-K"
    namespace: str  # PACT_NS, SVD_NS, or a base method name ("ties")
    field: str  # "K"
    hint: Any  # the field's type hint
    default: Any

    @property
    def dest(self) -> str:
        return "hp__" + self.flag[2:].replace("-", "_")


def field_flags(namespaces: Iterable[str] | None = None) -> list[_Flag]:
    """The hyper-parameter flags of ``namespaces`` (default: all): ``SVD_NS`` (``SVDOptions``), ``PACT_NS``
    (``PACTConfig``) and each base method's ``Params``."""
    from pactmerge.merging import PACTConfig, SVDOptions
    from pactmerge.merging.registry import METHODS

    def fields(cls: type, skip: set[str] = frozenset()) -> list[tuple[str, Any, Any]]:
        hints = typing.get_type_hints(cls)
        return [(f.name, hints[f.name], f.default) for f in dataclasses.fields(cls) if f.name not in skip]

    svd_names = {f.name for f in dataclasses.fields(SVDOptions)}
    flags = [_Flag("--" + name.replace("_", "-"), SVD_NS, name, hint, default) for name, hint, default in fields(SVDOptions)]
    flags += [_Flag("--pact-" + name.replace("_", "-"), PACT_NS, name, hint, default) for name, hint, default in fields(PACTConfig)]
    for method, spec in METHODS.items():
        prefix = "--" + method.replace("_", "-") + "-"
        flags += [_Flag(prefix + name.replace("_", "-"), method, name, hint, default)
                  for name, hint, default in fields(spec.params_cls, svd_names)]
    wanted = None if namespaces is None else set(namespaces)
    return [f for f in flags if wanted is None or f.namespace in wanted]


def _field_docs(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line in the dataclass source (``K: int = 15  # pre-trained core rank``)."""
    import inspect
    import re

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for match in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, re.MULTILINE):
            docs[match.group(1)] = match.group(2).strip()
    return docs


def _add_flag(group: argparse._ArgumentGroup, f: _Flag, doc: str) -> None:
    origin = typing.get_origin(f.hint)
    help_text = f"{doc + '; ' if doc else ''}default {f.default!r}"
    if f.hint is bool:
        group.add_argument(f.flag, dest=f.dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif origin is tuple:
        group.add_argument(f.flag, dest=f.dest, metavar="PATTERN", action="append", default=None,
                           help=help_text + " (repeatable)")
    elif origin is Literal:
        group.add_argument(f.flag, dest=f.dest, choices=[str(c) for c in typing.get_args(f.hint)], default=None,
                           help=help_text)
    else:
        metavar = {int: "INT", float: "NUMBER"}.get(f.hint, "VALUE")
        group.add_argument(f.flag, dest=f.dest, metavar=metavar, default=None, help=help_text)


def _ambiguous_names(flags: list[_Flag], taken: set[str]) -> dict[str, list[str]]:
    """Bare ``--<field>`` -> the prefixed flags that carry that field, for fields whose bare flag is free."""
    out: dict[str, list[str]] = {}
    for f in flags:
        if f.namespace == SVD_NS:
            continue
        bare = "--" + f.field.replace("_", "-")
        if bare not in taken:
            out.setdefault(bare, []).append(f.flag)
    return out


def add_param_flags(parser: argparse.ArgumentParser, namespaces: Iterable[str] | None = None) -> list[_Flag]:
    """Add the flags of ``namespaces`` (default: all), one argument group per namespace, with each
    field's comment as its help; ``collect_params`` reads them back."""
    from pactmerge.merging import PACTConfig, SVDOptions
    from pactmerge.merging.registry import METHODS

    flags = field_flags(namespaces)
    docs = {SVD_NS: _field_docs(SVDOptions), PACT_NS: _field_docs(PACTConfig)}
    docs.update({name: _field_docs(spec.params_cls) for name, spec in METHODS.items()})
    groups = {
        SVD_NS: "merge-wide SVD options (PACT and the method alike)",
        PACT_NS: "PACT (methods named pact+...): --pact-<field> of PACTConfig",
    }
    made: dict[str, Any] = {}
    for f in flags:
        if f.namespace not in made:
            made[f.namespace] = parser.add_argument_group(groups.get(f.namespace, f"{f.namespace} and pact+{f.namespace}"))
        _add_flag(made[f.namespace], f, docs[f.namespace].get(f.field, ""))
    parser.set_defaults(_hp_flags=flags, _ambiguous={})
    return flags


def refuse_bare_names(parser: argparse.ArgumentParser, flags: list[_Flag]) -> None:
    """Accept (hidden) and later refuse each bare ``--<field>`` that no other option of ``parser`` takes;
    call after every other argument is added."""
    taken = set(parser._option_string_actions)
    ambiguous = _ambiguous_names(flags, taken)
    for bare in ambiguous:
        parser.add_argument(bare, dest="ambiguous__" + bare[2:].replace("-", "_"), metavar="VALUE", default=None,
                            help=argparse.SUPPRESS)
    parser.set_defaults(_ambiguous=ambiguous)


def refuse_ambiguous(args: argparse.Namespace) -> None:
    """A bare field name (``--k``) means different things in different namespaces: name the real flags."""
    for bare, carriers in getattr(args, "_ambiguous", {}).items():
        if getattr(args, "ambiguous__" + bare[2:].replace("-", "_"), None) is not None:
            which = " or ".join(carriers)
            raise ConfigError(
                f"{bare} is ambiguous: parameters are named by namespace; use {which} "
                f"(see `pactmerge merge --help`)"
            )


def collect_params(args: argparse.Namespace, spec: Any = None, items: list[str] | None = None, option: str = "--param",
                   *, all_pact: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(method params incl. the merge-wide SVD options, PACT params or None) from the derived flags and
    ``--param`` (``pact.KEY=VALUE``, or ``pact={...}`` as one mapping, for PACT).

    A key given twice must agree. A method flag of another method (``--ties-k`` with ``tsvm``) is refused.
    """
    from pactmerge.coerce import coerce, parse_key_values

    params: dict[str, Any] = {}
    pact: dict[str, Any] = {}
    sources: dict[tuple[str, str], str] = {}

    def put(target: dict, ns: str, key: str, value: Any, source: str) -> None:
        if key in target and target[key] != value:
            raise ConfigError(
                f"parameter {key!r} given twice with different values ({sources[(ns, key)]} and {source})"
            )
        target[key] = value
        sources[(ns, key)] = source

    try:
        given = parse_key_values(list(args.param if items is None else items), option)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for key, value in given.items():
        if all_pact or key.startswith("pact."):
            put(pact, PACT_NS, key.removeprefix("pact.") if not all_pact else key, value, f"{option} {key}={value}")
        else:
            put(params, "params", key, value, f"{option} {key}={value}")

    for f in args._hp_flags:
        raw = getattr(args, f.dest, None)
        if raw is None:
            continue
        if spec is not None and f.namespace not in (PACT_NS, SVD_NS) and f.namespace != spec.base:
            raise ConfigError(f"{f.flag} is a parameter of {f.namespace} and pact+{f.namespace}, not of {spec.name}; "
                              "drop it or choose that method")
        try:
            value = coerce(_flag_value(raw, f.hint, f.flag), f.hint, f.flag)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        put(pact if f.namespace == PACT_NS else params, PACT_NS if f.namespace == PACT_NS else "params",
            f.field, value, f"{f.flag} {raw if not isinstance(raw, list) else ' '.join(raw)}")
    if pact and isinstance(params.get("pact"), dict):  # --param pact={...} and --pact-* flags together
        nested = params.pop("pact")
        for key, value in nested.items():
            put(pact, PACT_NS, key, value, f"--param pact={nested}")
    return params, (pact or None)


def _flag_value(raw: Any, hint: Any, flag: str) -> Any:
    """A flag's text read as a YAML scalar (``1e8`` as a number where an integer is expected, so that the
    core's bound names it); booleans and lists of patterns come from argparse as they are."""
    from pactmerge.coerce import parse_key_values

    if isinstance(raw, (bool, list)):
        return raw
    if typing.get_origin(hint) is Literal:
        return raw
    value = parse_key_values([f"v={raw}"], flag)["v"]
    if hint is int and isinstance(value, (str, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            return value
        if number.is_integer():
            return int(number)
    return value
