"""``pactmerge merge``: merge fine-tuned checkpoint files into one, with any registered method.

Inputs are safetensors files (merged key by key from lazily opened files, see
``pactmerge.merging.merge_files``) or torch weight files (loaded with ``weights_only``; a
file that needs arbitrary pickled objects is refused unless ``--trust-pickle``). Output:
the merged state dict ``theta0 + alpha * tau*`` in the input dtypes, written as safetensors,
and a JSON sidecar ``<out>.json`` (``fileio.sidecar_path``: ``merged.safetensors.json``; method, resolved method and PACT parameters, alpha, sha256
of every input, pactmerge version, diagnostics, timings).

Hyper-parameter flags are derived from the parameter dataclasses of the merging core
(``commands._params``, shared with ``transfer`` and ``analyze``), one namespace each: ``--pact-<field>`` from ``PACTConfig`` (``--pact-K``, ``--pact-k``,
``--pact-protect``, ...), ``--<method>-<field>`` from each method's ``Params`` (``--ties-k``,
``--iso-cts-f``, ...), and the merge-wide SVD options ``--svd``, ``--oversample``,
``--power-iters``, ``--seed`` from ``SVDOptions``. A bare field name (``--k``, ``--K``) is
refused with the prefixed flags that carry it.

The destination is checked before anything is merged (``fileio.check_weights_destination``);
``fileio.write_weights_with_sidecar`` writes both files completely to temporary files beside
their destinations and only then moves them into place, so an error at any point leaves a
previous output and its sidecar as they were.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from pactmerge.commands._output import show
from pactmerge.errors import CheckpointError, ConfigError, MergeError
from pactmerge.fileio import check_weights_destination, sidecar_path, write_weights_with_sidecar

HELP = "merge fine-tuned checkpoint files (safetensors or torch weights) into one"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pactmerge.commands._params import add_param_flags, refuse_bare_names
    from pactmerge.commands._study import add_config_arguments

    study = parser.add_argument_group("study mode: the merge stage of a run config (pactmerge merge CONFIG)")
    add_config_arguments(study)
    study.add_argument("--only", metavar="ID", action="append", default=[],
                       help="build only this planned merge, e.g. pact+tsvm, or AdaMerging variant of merge.adamerging, "
                            "e.g. pact+adamerging (repeatable; default: every planned merge)")
    io = parser.add_argument_group("file mode: inputs and output")
    io.add_argument("--pretrained", metavar="FILE", help="pre-trained encoder weights (safetensors or torch file)")
    io.add_argument("--finetuned", metavar="FILE", nargs="*", default=None, help="fine-tuned encoder weights, one per task")
    io.add_argument("--out", metavar="FILE", help="merged weights to write (safetensors); a sidecar FILE.json is written too")
    io.add_argument("--trust-pickle", action="store_true", help="allow torch files that need arbitrary pickled objects")
    io.add_argument("--legacy-pickle", action="store_true", help="read torch.save(model) pickles "
                    "(task_vectors, tall_masks, AdaMerging) without running their code")
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

    flags = add_param_flags(parser)

    k = parser.add_argument_group("keys and computation")
    k.add_argument("--conv-as-matrix", action="store_true", help="treat convolution kernels as (out, in*kh*kw) matrices")
    k.add_argument("--exclude", metavar="PATTERN", action="append", default=[], help="keys to merge as vectors (glob, repeatable)")
    k.add_argument("--device", default="auto", help="where the linear algebra runs: auto, cpu, cuda or cuda:N")
    k.add_argument("--compute-dtype", choices=("float32", "float64"), default="float32", help="dtype of the maths")

    refuse_bare_names(parser, flags)


def _run_study_stage(args: argparse.Namespace) -> int:
    """``pactmerge merge CONFIG``: every configured merge of a study, α chosen on validation data."""
    if args.pretrained or args.finetuned or args.out:
        raise ConfigError("give either a run CONFIG (study mode) or --pretrained/--finetuned/--out (file mode), not both")
    _refuse_weights_as_config(Path(args.config))
    from pactmerge.commands._study import open_context
    from pactmerge.pipeline.merge_plan import adamerging_ids, plan_merges
    from pactmerge.pipeline.merge_stage import run_merge_stage

    ctx = open_context(args)
    merges, ada = None, []
    if args.only:
        planned = {p.id: p for p in plan_merges(ctx.cfg.merge)}
        known = [*planned, *adamerging_ids(ctx.cfg.merge)]
        unknown = [i for i in args.only if i not in known]
        if unknown:
            raise ConfigError(f"--only {', '.join(unknown)}: not a merge of this config; its merges: "
                              + ", ".join(known))
        only = list(dict.fromkeys(args.only))
        merges, ada = [planned[i] for i in only if i in planned], [i for i in only if i not in planned]
    results = {} if merges == [] else run_merge_stage(ctx, merges)  # [] : --only named AdaMerging alone
    if ada:  # AdaMerging variants: learned on unlabeled test images, as the `adamerging` stage does
        from pactmerge.pipeline.adamerging import run_adamerging

        run_adamerging(ctx, only=ada)
        results.update({i: ctx.store.entry(f"merged/{i}") for i in ada})
    for mid, entry in results.items():  # test accuracy: `pactmerge evaluate CONFIG`
        val = entry.get("metrics", {}).get("val_avg")
        show(f"{mid:28s} alpha={entry.get('alpha')}  validation avg "
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
    from pactmerge.commands._params import collect_params, refuse_ambiguous

    if args.list_methods:
        for name in merging.available_methods():
            show(name)
        return 0
    refuse_ambiguous(args)
    if args.config is not None:
        return _run_study_stage(args)

    started = time.perf_counter()
    pretrained, finetuned, out = _check_paths(args)
    spec = merging.get_method(args.method)  # unknown name -> MergeError listing the known ones
    params, pact = collect_params(args, spec)
    from pactmerge.merging.registry import resolve_params

    resolve_params(spec, params, pact)  # every parameter checked (types, ranges) before any file is read
    stream = _choose_stream(args, [pretrained, *finetuned])
    device = merging.resolve_device(args.device)
    check_weights_destination(out, "--out")

    import torch

    from pactmerge import __version__, fileio

    key_policy = merging.KeyPolicy(conv_as_matrix=args.conv_as_matrix, exclude=tuple(args.exclude))

    t0 = time.perf_counter()
    hashes = fileio.sha256_files([pretrained, *finetuned], workers=torch.get_num_threads())
    t_hash = time.perf_counter() - t0
    kwargs = dict(params=params, pact=pact, key_policy=key_policy, device=str(device),
                  compute_dtype=getattr(torch, args.compute_dtype),
                  task_ids=[hashes[str(p)] for p in finetuned])  # seeds of randomized SVDs: order-independent

    t0 = time.perf_counter()
    result, pre_sd = _load_and_merge(pretrained, finetuned, args.method, stream, args.trust_pickle, kwargs,
                                     legacy_pickle=args.legacy_pickle)
    t_merge = time.perf_counter() - t0

    alpha = result.default_alpha if args.alpha is None else float(args.alpha)
    merged = result.apply(pre_sd, alpha=alpha)
    bad = next((k for k, v in merged.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise MergeError(f"merged key {bad!r} holds NaN or Inf values at alpha={alpha:g}; {out} was not written; "
                         "lower --alpha or check the inputs")

    timings = {**dict(result.timings), "sha256_s": t_hash, "load_and_merge_s": t_merge}
    sidecar = _sidecar(args, result, alpha, pretrained, finetuned, hashes, stream, device, timings)

    def finished_sidecar(_sha256: str) -> dict[str, Any]:  # called once the weights are written: in the total
        sidecar["timings"]["total_s"] = time.perf_counter() - started
        return sidecar

    sidecar_file = write_weights_with_sidecar(out, merged, finished_sidecar,
                                              metadata={"pactmerge_method": result.method,
                                                        "pactmerge_version": __version__})
    show(
        f"merged {len(finetuned)} models with {result.method} (alpha={alpha:g}) -> {out} "
        f"[{sidecar_file.name}] in {sidecar['timings']['total_s']:.1f} s"
    )
    return 0


def _load_and_merge(pretrained: Path, finetuned: list[Path], method: str, stream: bool, trust_pickle: bool, kwargs: dict,
                    legacy_pickle: bool = False):
    """(MergeResult, pre-trained state dict). The merging core refuses mismatched or non-finite inputs, naming key and file."""
    from pactmerge import fileio, merging
    from pactmerge.merging.sources import DictSource, check_finite, validate_sources

    if stream:
        result = merging.merge_files(pretrained, finetuned, method, **kwargs)
        return result, fileio.load_state_dict(pretrained)
    from pactmerge.interop.legacy import read_state_file  # state dicts, or with legacy_pickle pickled models' towers

    pre_sd = read_state_file(pretrained, trust_pickle=trust_pickle, legacy_pickle=legacy_pickle)
    ft_sds = [read_state_file(p, trust_pickle=trust_pickle, legacy_pickle=legacy_pickle) for p in finetuned]
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
    if out.resolve() in inputs or sidecar_path(out).resolve() in inputs:
        raise ConfigError(f"--out {out}: would overwrite an input file; choose another path")
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: the merged weights are written as safetensors; give a path ending in .safetensors")
    return pretrained, finetuned, out


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
