"""``pactmerge merge``: merge fine-tuned checkpoint files into one, with any registered method.

Inputs are safetensors files (merged key by key from lazily opened files, see
``pactmerge.merging.merge_files``) or torch weight files (loaded with ``weights_only``; a
file that needs arbitrary pickled objects is refused unless ``--trust-pickle``). Output:
the merged state dict ``theta0 + alpha * tau*`` in the input dtypes, written atomically as
safetensors, then a JSON sidecar ``<out>.json`` (method, resolved hyper-parameters, alpha,
sha256 of every input, pactmerge version, diagnostics, timings). On any error nothing is
written.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from pactmerge.errors import CheckpointError, ConfigError, MergeError

HELP = "merge fine-tuned checkpoint files (safetensors or torch weights) into one"

# explicit flag (argparse dest) -> hyper-parameter name of the merging registry
_FLAG_PARAMS = {
    "K": "K",
    "k": "k",
    "protect": "protect",
    "rank_mode": "rank_mode",
    "svd": "svd",
    "seed": "seed",
    "oversample": "oversample",
    "power_iters": "power_iters",
    "ties_k": "k",
    "iso_cts_f": "f",
    "guard": "guard",
}


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
        help="any method hyper-parameter; VALUE is parsed as JSON when it can be (repeatable)",
    )
    m.add_argument("--svd", choices=("exact", "randomized"), default=None, help="SVD used where the method allows a randomized one")
    m.add_argument("--seed", type=int, default=None, help="seed of the randomized SVD")
    m.add_argument("--oversample", type=int, default=None, help="randomized SVD oversampling")
    m.add_argument("--power-iters", type=int, default=None, help="randomized SVD power iterations")
    m.add_argument("--ties-k", type=float, default=None, help="TIES: percentage of entries kept per task")
    m.add_argument("--iso-cts-f", type=float, default=None, help="Iso-CTS: share of the rank given to the common subspace")

    p = parser.add_argument_group("PACT (methods named pact+...)")
    p.add_argument("--K", type=int, default=None, help="rank of the pre-trained core")
    p.add_argument("--k", type=int, default=None, help="rank of each task core")
    p.add_argument("--protect", choices=("others", "self", "all"), default=None, help="whose reliance space a task must not write into")
    p.add_argument("--rank-mode", choices=("fixed", "fraction", "energy"), default=None, help="how K and k are chosen")
    p.add_argument("--guard", type=float, default=None, help="leave a key unchanged when the protected space exceeds this share of n")
    p.add_argument("--pact-include", metavar="PATTERN", action="append", default=None, help="matrix keys PACT touches (glob, repeatable)")

    k = parser.add_argument_group("keys and computation")
    k.add_argument("--conv-as-matrix", action="store_true", help="treat convolution kernels as (out, in*kh*kw) matrices")
    k.add_argument("--exclude", metavar="PATTERN", action="append", default=[], help="keys to merge as vectors (glob, repeatable)")
    k.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the linear algebra runs")
    k.add_argument("--compute-dtype", choices=("float32", "float64"), default="float32", help="dtype of the maths")


def _run_study_stage(args: argparse.Namespace) -> int:
    """``pactmerge merge CONFIG``: every configured merge of a study, α chosen on validation data."""
    if args.pretrained or args.finetuned or args.out:
        raise ConfigError("give either a run CONFIG (study mode) or --pretrained/--finetuned/--out (file mode), not both")
    from pactmerge.commands._study import open_study

    results = open_study(args).merge()
    for mid, entry in results.items():
        test = entry.get("metrics", {}).get("test", {})
        avg = 100 * sum(test.values()) / max(len(test), 1)
        print(f"{mid:28s} alpha={entry.get('alpha')}  test avg {avg:.1f}%")
    return 0


def run(args: argparse.Namespace) -> int:
    from pactmerge import merging

    if args.list_methods:
        for name in merging.available_methods():
            print(name)
        return 0
    if args.config is not None:
        return _run_study_stage(args)

    started = time.perf_counter()
    pretrained, finetuned, out = _check_paths(args)
    params = _collect_params(args)
    merging.get_method(args.method)  # unknown name -> MergeError listing the known ones
    stream = _choose_stream(args, [pretrained, *finetuned])
    device = _choose_device(args.device)

    import torch

    from pactmerge import fileio

    key_policy = merging.KeyPolicy(
        conv_as_matrix=args.conv_as_matrix,
        exclude=tuple(args.exclude),
        **({"pact_include": tuple(args.pact_include)} if args.pact_include else {}),
    )
    kwargs = dict(params=params, key_policy=key_policy, device=device, compute_dtype=getattr(torch, args.compute_dtype))

    t0 = time.perf_counter()
    hashes = {str(p): fileio.sha256_file(p) for p in [pretrained, *finetuned]}
    t_hash = time.perf_counter() - t0

    t0 = time.perf_counter()
    result, pre_sd = _load_and_merge(pretrained, finetuned, args.method, stream, args.trust_pickle, kwargs)
    t_merge = time.perf_counter() - t0

    alpha = result.default_alpha if args.alpha is None else float(args.alpha)
    merged = result.apply(pre_sd, alpha=alpha)
    _check_finite(merged, "merged key", f"{out} was not written; check the inputs and --alpha")

    timings = {**dict(result.timings), "sha256_s": t_hash, "load_and_merge_s": t_merge}
    sidecar = _sidecar(args, result, alpha, pretrained, finetuned, hashes, stream, device, timings)
    # serialise before writing the weights, so a sidecar that cannot be built never leaves weights behind
    fileio.json_text(sidecar)

    from pactmerge import __version__

    fileio.save_safetensors_atomic(out, merged, metadata={"pactmerge_method": result.method, "pactmerge_version": __version__})
    sidecar["timings"]["total_s"] = time.perf_counter() - started
    sidecar_path = _sidecar_path(out)
    try:
        fileio.write_json_atomic(sidecar_path, sidecar)
    except BaseException:
        out.unlink(missing_ok=True)  # weights without their record would be untraceable
        raise
    print(
        f"merged {len(finetuned)} models with {result.method} (alpha={alpha:g}) -> {out} "
        f"[{sidecar_path.name}] in {sidecar['timings']['total_s']:.1f} s"
    )
    return 0


def _load_and_merge(pretrained: Path, finetuned: list[Path], method: str, stream: bool, trust_pickle: bool, kwargs: dict):
    """(MergeResult, pre-trained state dict), after refusing unreadable, mismatched or non-finite inputs."""
    from pactmerge import fileio, merging

    if stream:
        # headers only: refuse truncated files and mismatched keys before any tensor is read
        layouts = [fileio.read_safetensors_layout(p) for p in [pretrained, *finetuned]]
        _check_layouts(pretrained, layouts[0], finetuned, layouts[1:])
        result = merging.merge_files(pretrained, finetuned, method, **kwargs)  # checks finiteness key by key
        return result, fileio.load_state_dict(pretrained)
    pre_sd = fileio.load_state_dict(pretrained, trust_pickle=trust_pickle)
    ft_sds = [fileio.load_state_dict(p, trust_pickle=trust_pickle) for p in finetuned]
    _check_layouts(pretrained, _layout(pre_sd), finetuned, [_layout(sd) for sd in ft_sds])
    for path, sd in zip([pretrained, *finetuned], [pre_sd, *ft_sds]):
        _check_finite(sd, f"{path}: key", "the file is corrupt; nothing was written")
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


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _collect_params(args: argparse.Namespace) -> dict[str, Any]:
    """Hyper-parameters from ``--param KEY=VALUE`` and the explicit flags; a key given twice must agree."""
    params: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(key: str, value: Any, source: str) -> None:
        if key in params and params[key] != value:
            raise ConfigError(f"hyper-parameter {key!r} given twice with different values ({sources[key]} and {source})")
        params[key] = value
        sources[key] = source

    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE, e.g. --param K=15")
        put(key.strip(), _parse_value(value.strip()), f"--param {item}")
    for dest, key in _FLAG_PARAMS.items():
        value = getattr(args, dest, None)
        if value is not None:
            put(key, value, "--" + dest.replace("_", "-"))
    return params


def _choose_stream(args: argparse.Namespace, paths: list[Path]) -> bool:
    from pactmerge.fileio import is_safetensors

    all_st = all(is_safetensors(p) for p in paths)
    if args.stream and not all_st:
        bad = next(p for p in paths if not is_safetensors(p))
        raise ConfigError(f"--stream needs safetensors inputs, but {bad} is not one; drop --stream or convert the file")
    return all_st if args.stream is None else bool(args.stream)


def _choose_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return device


def _layout(state_dict: dict) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state_dict.items()}


def _check_layouts(pretrained: Path, ref: dict, finetuned: list[Path], layouts: list[dict]) -> None:
    """Refuse key or shape mismatches between the pre-trained and each fine-tuned file, naming key and file."""
    for path, layout in zip(finetuned, layouts):
        for key in sorted(ref.keys() - layout.keys()):
            raise MergeError(f"{path}: key {key!r} of the pre-trained model {pretrained} is missing")
        for key in sorted(layout.keys() - ref.keys()):
            raise MergeError(f"{path}: key {key!r} is not in the pre-trained model {pretrained}")
        for key, shape in ref.items():
            if layout[key] != shape:
                raise MergeError(
                    f"{path}: key {key!r} has shape {list(layout[key])}, the pre-trained model {pretrained} has {list(shape)}"
                )


def _check_finite(state: dict, what: str, consequence: str) -> None:
    """Refuse NaN or Inf in any floating-point tensor of ``state``; the message reads ``{what} 'KEY' ...``."""
    import torch

    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise MergeError(f"{what} {key!r} holds NaN or Inf values; {consequence}")


def _sidecar(args, result, alpha, pretrained, finetuned, hashes, stream, device, timings) -> dict[str, Any]:
    from pactmerge import __version__

    def entry(path: Path) -> dict[str, str]:
        return {"path": str(path), "sha256": hashes[str(path)]}

    return {
        "pactmerge_version": __version__,
        "method": result.method,
        "params": result.params,
        "alpha": alpha,
        "default_alpha": result.default_alpha,
        "key_policy": {"conv_as_matrix": args.conv_as_matrix, "exclude": list(args.exclude), "pact_include": args.pact_include},
        "inputs": {"pretrained": entry(pretrained), "finetuned": [entry(p) for p in finetuned]},
        "output": str(Path(args.out)),
        "stream": stream,
        "device": device,
        "compute_dtype": args.compute_dtype,
        "diagnostics": result.diagnostics,
        "timings": timings,
    }
