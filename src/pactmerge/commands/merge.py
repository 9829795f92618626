"""``pactmerge merge``: merge fine-tuned checkpoint files into one, with any registered method.

Inputs are safetensors files (merged key by key from lazily opened files, see
``pactmerge.merging.merge_files``) or torch weight files (loaded with ``weights_only``; a
file that needs arbitrary pickled objects is refused unless ``--trust-pickle``). Output:
the merged state dict ``theta0 + alpha * tau*`` in the input dtypes, written as safetensors,
and a JSON sidecar ``<out>.json`` (method, resolved method and PACT parameters, alpha, sha256
of every input, pactmerge version, diagnostics, timings).

Hyper-parameter flags are derived from the parameter dataclasses of the merging core, one
namespace each: ``--pact-<field>`` from ``PACTConfig`` (``--pact-K``, ``--pact-k``,
``--pact-protect``, ...), ``--<method>-<field>`` from each method's ``Params`` (``--ties-k``,
``--iso-cts-f``, ...), and the merge-wide SVD options ``--svd``, ``--oversample``,
``--power-iters``, ``--seed`` from ``SVDOptions``. A bare field name (``--k``, ``--K``) is
refused with the prefixed flags that carry it.

The destination is checked before anything is merged; both files are written completely to
temporary files beside their destinations and only then moved into place, so an error at any
point leaves a previous output and its sidecar as they were.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pactmerge.errors import CheckpointError, ConfigError, MergeError

HELP = "merge fine-tuned checkpoint files (safetensors or torch weights) into one"

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


def _field_flags() -> list[_Flag]:
    """Every hyper-parameter flag, from ``SVDOptions``, ``PACTConfig`` and each method's ``Params``."""
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
    return flags


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pactmerge.commands._study import add_config_arguments

    study = parser.add_argument_group("study mode: the merge stage of a run config (pactmerge merge CONFIG)")
    add_config_arguments(study)
    io = parser.add_argument_group("file mode: inputs and output")
    io.add_argument("--pretrained", metavar="FILE", help="pre-trained encoder weights (safetensors or torch file)")
    io.add_argument("--finetuned", metavar="FILE", nargs="*", default=None, help="fine-tuned encoder weights, one per task")
    io.add_argument("--out", metavar="FILE", help="merged weights to write (safetensors); a sidecar FILE.json is written too")
    io.add_argument("--trust-pickle", action="store_true", help="allow torch files that need arbitrary pickled objects")
    io.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="merge key by key from lazily opened safetensors files (default: when every input is safetensors)",
    )

    m = parser.add_argument_group("method")
    m.add_argument("--method", metavar="NAME", help="merge method, e.g. tsvm, iso_c, pact+tsvm (see --list-methods)")
    m.add_argument("--list-methods", action="store_true", help="print the registered methods and exit")
    m.add_argument("--alpha", type=float, default=None, help="scaling coefficient of the merged task vector (default: the method's)")
    m.add_argument(
        "--param",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="any method parameter, or a PACT one as pact.KEY=VALUE; VALUE is read as a YAML scalar (repeatable)",
    )

    from pactmerge.merging import PACTConfig, SVDOptions
    from pactmerge.merging.registry import METHODS

    flags = _field_flags()
    docs = {SVD_NS: _field_docs(SVDOptions), PACT_NS: _field_docs(PACTConfig)}
    docs.update({name: _field_docs(spec.params_cls) for name, spec in METHODS.items()})
    groups = {
        SVD_NS: parser.add_argument_group("merge-wide SVD options (PACT and the method alike)"),
        PACT_NS: parser.add_argument_group("PACT (methods named pact+...): --pact-<field> of PACTConfig"),
    }
    for f in flags:
        if f.namespace not in groups:
            groups[f.namespace] = parser.add_argument_group(f"{f.namespace} and pact+{f.namespace}")
        _add_flag(groups[f.namespace], f, docs[f.namespace].get(f.field, ""))

    k = parser.add_argument_group("keys and computation")
    k.add_argument("--conv-as-matrix", action="store_true", help="treat convolution kernels as (out, in*kh*kw) matrices")
    k.add_argument("--exclude", metavar="PATTERN", action="append", default=[], help="keys to merge as vectors (glob, repeatable)")
    k.add_argument("--device", default="auto", help="where the linear algebra runs: auto, cpu, cuda or cuda:N")
    k.add_argument("--compute-dtype", choices=("float32", "float64"), default="float32", help="dtype of the maths")

    taken = set(parser._option_string_actions)
    for bare, carriers in _ambiguous_names(flags, taken).items():
        parser.add_argument(bare, dest="ambiguous__" + bare[2:].replace("-", "_"), metavar="VALUE", default=None,
                            help=argparse.SUPPRESS)
    parser.set_defaults(_hp_flags=flags, _ambiguous=_ambiguous_names(flags, taken))


def _run_study_stage(args: argparse.Namespace) -> int:
    """``pactmerge merge CONFIG``: every configured merge of a study, α chosen on validation data."""
    if args.pretrained or args.finetuned or args.out:
        raise ConfigError("give either a run CONFIG (study mode) or --pretrained/--finetuned/--out (file mode), not both")
    _refuse_weights_as_config(Path(args.config))
    from pactmerge.commands._study import open_context
    from pactmerge.pipeline.merge_stage import run_merge_stage

    results = run_merge_stage(open_context(args))
    for mid, entry in results.items():  # test accuracy: `pactmerge evaluate CONFIG`
        val = entry.get("metrics", {}).get("val_avg")
        print(f"{mid:28s} alpha={entry.get('alpha')}  validation avg "
              + ("—" if val is None else f"{100 * val:.1f}%"))
    return 0


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def _refuse_weights_as_config(path: Path) -> None:
    """A weights file given where the study CONFIG goes: say so, and how file mode takes it."""
    import codecs

    looks_binary = path.suffix.lower() in WEIGHT_SUFFIXES
    if not looks_binary and path.is_file():
        with open(path, "rb") as fh:
            try:
                codecs.getincrementaldecoder("utf-8")().decode(fh.read(1 << 16), final=False)
            except UnicodeDecodeError:
                looks_binary = True
    if looks_binary:
        raise ConfigError(
            f"{path}: not a study config (a weights or other binary file); the positional argument of "
            "`pactmerge merge` is a study config (YAML); "
            "to merge weight files use file mode: pactmerge merge --pretrained PRE --finetuned FT [FT ...] "
            "--method METHOD --out OUT.safetensors")


def run(args: argparse.Namespace) -> int:
    from pactmerge import merging

    if args.list_methods:
        for name in merging.available_methods():
            print(name)
        return 0
    _refuse_ambiguous(args)
    if args.config is not None:
        return _run_study_stage(args)

    started = time.perf_counter()
    pretrained, finetuned, out = _check_paths(args)
    spec = merging.get_method(args.method)  # unknown name -> MergeError listing the known ones
    params, pact = _collect_params(args, spec)
    from pactmerge.merging.registry import resolve_params

    resolve_params(spec, params, pact)  # every parameter checked (types, ranges) before any file is read
    stream = _choose_stream(args, [pretrained, *finetuned])
    device = merging.resolve_device(args.device)
    _check_destination(out)

    import torch

    from pactmerge import fileio

    key_policy = merging.KeyPolicy(conv_as_matrix=args.conv_as_matrix, exclude=tuple(args.exclude))

    t0 = time.perf_counter()
    hashes = {str(p): fileio.sha256_file(p) for p in [pretrained, *finetuned]}
    t_hash = time.perf_counter() - t0
    kwargs = dict(params=params, pact=pact, key_policy=key_policy, device=str(device),
                  compute_dtype=getattr(torch, args.compute_dtype),
                  task_ids=[hashes[str(p)] for p in finetuned])  # seeds of randomized SVDs: order-independent

    t0 = time.perf_counter()
    result, pre_sd = _load_and_merge(pretrained, finetuned, args.method, stream, args.trust_pickle, kwargs)
    t_merge = time.perf_counter() - t0

    alpha = result.default_alpha if args.alpha is None else float(args.alpha)
    merged = result.apply(pre_sd, alpha=alpha)
    bad = next((k for k, v in merged.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise MergeError(f"merged key {bad!r} holds NaN or Inf values at alpha={alpha:g}; {out} was not written; "
                         "lower --alpha or check the inputs")

    timings = {**dict(result.timings), "sha256_s": t_hash, "load_and_merge_s": t_merge}
    sidecar = _sidecar(args, result, alpha, pretrained, finetuned, hashes, stream, device, timings)
    fileio.json_text(sidecar)  # a sidecar that cannot be serialised fails here, before anything is written
    sidecar_path = _sidecar_path(out)
    _write_outputs(out, merged, result.method, sidecar_path, sidecar, started)
    print(
        f"merged {len(finetuned)} models with {result.method} (alpha={alpha:g}) -> {out} "
        f"[{sidecar_path.name}] in {sidecar['timings']['total_s']:.1f} s"
    )
    return 0


def _refuse_ambiguous(args: argparse.Namespace) -> None:
    """A bare field name (``--k``) means different things in different namespaces: name the real flags."""
    for bare, carriers in getattr(args, "_ambiguous", {}).items():
        if getattr(args, "ambiguous__" + bare[2:].replace("-", "_"), None) is not None:
            which = " or ".join(carriers)
            raise ConfigError(
                f"{bare} is ambiguous: parameters are named by namespace; use {which} "
                f"(see `pactmerge merge --help`)"
            )


def _load_and_merge(pretrained: Path, finetuned: list[Path], method: str, stream: bool, trust_pickle: bool, kwargs: dict):
    """(MergeResult, pre-trained state dict). The merging core refuses mismatched or non-finite inputs, naming key and file."""
    from pactmerge import fileio, merging
    from pactmerge.merging.sources import DictSource, check_finite, validate_sources

    if stream:
        result = merging.merge_files(pretrained, finetuned, method, **kwargs)
        return result, fileio.load_state_dict(pretrained)
    pre_sd = fileio.load_state_dict(pretrained, trust_pickle=trust_pickle)
    ft_sds = [fileio.load_state_dict(p, trust_pickle=trust_pickle) for p in finetuned]
    # the same checks merge() runs, but with the files' names in the messages
    sources = [DictSource(sd, str(p)) for p, sd in zip([pretrained, *finetuned], [pre_sd, *ft_sds])]
    validate_sources(sources[0], sources[1:])
    for src in sources:
        for key in src.keys():
            check_finite(src.get(key), key, src.name)
    return merging.merge(pre_sd, ft_sds, method, **kwargs), pre_sd


def _check_paths(args: argparse.Namespace) -> tuple[Path, list[Path], Path]:
    missing = [flag for flag, value in (("--pretrained", args.pretrained), ("--method", args.method), ("--out", args.out)) if not value]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}; see `pactmerge merge --help`")
    if not args.finetuned:
        raise MergeError("no fine-tuned models given: pass at least one file to --finetuned")
    pretrained = Path(args.pretrained)
    finetuned = [Path(p) for p in args.finetuned]
    out = Path(args.out)
    for path in [pretrained, *finetuned]:
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file")
    inputs = {p.resolve() for p in [pretrained, *finetuned]}
    if out.resolve() in inputs or _sidecar_path(out).resolve() in inputs:
        raise ConfigError(f"--out {out}: would overwrite an input file; choose another path")
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: the merged weights are written as safetensors; give a path ending in .safetensors")
    return pretrained, finetuned, out


def _sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _check_destination(out: Path) -> None:
    """Refuse, before merging, an ``--out`` (or its sidecar) that is a directory or other non-file, that lies
    under a regular file, or whose directory cannot be written; every message names the path."""
    for path, what in ((out, f"--out {out}"), (_sidecar_path(out), f"the sidecar path {_sidecar_path(out)} of --out")):
        if path.is_dir():
            raise ConfigError(f"{what}: is a directory; give the path of a file to write (remove or rename the directory)")
        if path.exists() and not path.is_file():
            raise ConfigError(f"{what}: exists and is not a regular file; choose another path")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"--out {out}: {ancestor} is a file, not a directory; choose a path inside a directory")
    try:  # a real write: permission bits say nothing for root or read-only file systems
        fd, probe = tempfile.mkstemp(prefix=".pactmerge-write-check-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"--out {out}: cannot write in {ancestor} ({exc.strerror or exc}); choose a writable directory"
        ) from None


def _write_outputs(out: Path, merged: dict, method: str, sidecar_path: Path, sidecar: dict, started: float) -> None:
    """Write the weights and the sidecar to temporary files beside them, then move both into place.

    Until both temporary files are complete, ``out`` and its sidecar keep whatever they held; a
    failure removes the temporary files and names the path.
    """
    from safetensors.torch import save_file

    from pactmerge import __version__, fileio

    flat = {k: v.detach().to("cpu").contiguous() for k, v in merged.items()}
    metadata = {"pactmerge_method": method, "pactmerge_version": __version__}
    target = out
    try:
        with fileio.atomic_path(out) as tmp_weights, fileio.atomic_path(sidecar_path) as tmp_sidecar:
            save_file(flat, str(tmp_weights), metadata=metadata)
            sidecar["timings"]["total_s"] = time.perf_counter() - started
            target = sidecar_path
            tmp_sidecar.write_text(fileio.json_text(sidecar), encoding="utf-8")
            target = out
    except OSError as exc:
        where = exc.filename or target
        raise CheckpointError(
            f"{where}: cannot be written ({exc.strerror or exc}) while writing {target}; nothing was moved onto "
            f"{out} or {sidecar_path} unless both were complete"
        ) from None


def _collect_params(args: argparse.Namespace, spec) -> tuple[dict[str, Any], dict[str, Any] | None]:
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
        given = parse_key_values(args.param, "--param")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for key, value in given.items():
        if key.startswith("pact."):
            put(pact, PACT_NS, key[len("pact."):], value, f"--param {key}={value}")
        else:
            put(params, "params", key, value, f"--param {key}={value}")

    for f in args._hp_flags:
        raw = getattr(args, f.dest, None)
        if raw is None:
            continue
        if f.namespace not in (PACT_NS, SVD_NS) and f.namespace != spec.base:
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


def _choose_stream(args: argparse.Namespace, paths: list[Path]) -> bool:
    from pactmerge.fileio import is_safetensors

    all_st = all(is_safetensors(p) for p in paths)
    if args.stream and not all_st:
        bad = next(p for p in paths if not is_safetensors(p))
        raise ConfigError(f"--stream needs safetensors inputs, but {bad} is not one; drop --stream or convert the file")
    return all_st if args.stream is None else bool(args.stream)


def _sidecar(args, result, alpha, pretrained, finetuned, hashes, stream, device, timings) -> dict[str, Any]:
    from pactmerge import __version__

    def entry(path: Path) -> dict[str, str]:
        return {"path": str(path), "sha256": hashes[str(path)]}

    return {
        "pactmerge_version": __version__,
        "method": result.method,
        "params": result.params,
        "pact_params": result.pact_params,
        "alpha": alpha,
        "default_alpha": result.default_alpha,
        "key_policy": {"conv_as_matrix": args.conv_as_matrix, "exclude": list(args.exclude)},
        "inputs": {"pretrained": entry(pretrained), "finetuned": [entry(p) for p in finetuned]},
        "task_ids": "sha256 of each fine-tuned file (they seed the randomized SVDs)",
        "output": str(Path(args.out)),
        "stream": stream,
        "device": str(device),
        "compute_dtype": args.compute_dtype,
        "diagnostics": result.diagnostics,
        "timings": timings,
    }
