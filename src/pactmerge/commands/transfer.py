"""``pactmerge transfer``: add task vectors to another encoder of the same architecture."""

from __future__ import annotations

from pathlib import Path

from pactmerge.commands._output import show

HELP = "add task vectors (optionally PACT-cleaned against the target) to another encoder, e.g. a merge or another checkpoint"


def add_arguments(parser):
    parser.add_argument("--target", metavar="FILE", help="target encoder file (open_clip or HF layout)")
    parser.add_argument("--store", metavar="RUN_DIR", help="run directory: source of --target-name, of the default "
                        "pre-trained encoder of the task vectors, and of the model, data and heads for --evaluate")
    parser.add_argument("--target-name", help="store entry used as target: pretrained, joint, sequential, merged/<id>, finetuned/<task>")
    parser.add_argument("--task-vector", action="append", default=[], required=True, metavar="TASK=FINETUNED[:PRETRAINED]",
                        help="task vector = FINETUNED - PRETRAINED (PRETRAINED defaults to the store's pre-trained "
                        "encoder); repeatable")
    parser.add_argument("--alpha", type=float, required=True, help="scaling of the summed task vectors")
    parser.add_argument("--pact", action="store_true", help="clean each task vector with PACT against the target's weights")
    parser.add_argument("--pact-param", action="append", default=[], metavar="KEY=VALUE",
                        help="PACT parameter (e.g. K=15, k=8, protect=others); repeatable")
    parser.add_argument("--conv-as-matrix", action="store_true", help="treat convolution kernels as matrices for PACT")
    parser.add_argument("--out", required=True, help="output *.safetensors (its JSON sidecar *.safetensors.json is "
                        "written beside it)")
    parser.add_argument("--evaluate", action="store_true", help="evaluate the result on the tasks (needs --store)")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="split for --evaluate")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickled torch files")
    parser.add_argument("--legacy-pickle", action="store_true", help="read torch.save(model) pickles "
                        "(task_vectors, tall_masks, AdaMerging) without running their code")
    from pactmerge.commands._params import PACT_NS, add_param_flags

    add_param_flags(parser, [PACT_NS])  # --pact-K, --pact-k, ... as `pactmerge merge` takes them


def parse_task_vector(spec: str) -> tuple[str, str, str | None]:
    """``TASK=FINETUNED[:PRETRAINED]`` -> (task, finetuned, pretrained or None); a path containing ':'
    that exists as a whole is taken as the fine-tuned file."""
    from pactmerge.errors import ConfigError

    task, sep, rest = spec.partition("=")
    if not sep or not task or not rest:
        raise ConfigError(f"--task-vector {spec!r}: expected TASK=FINETUNED_FILE[:PRETRAINED_FILE]")
    if ":" in rest and not Path(rest).exists():
        ft, pt = rest.rsplit(":", 1)
        return task, ft, pt
    return task, rest, None


def run(args) -> int:
    from pactmerge.analysis.transfer import TransferConfig, task_vector, transfer
    from pactmerge.commands._models import ModelSource
    from pactmerge.commands._params import collect_params
    from pactmerge.errors import ConfigError
    from pactmerge.fileio import check_weights_destination, write_weights_with_sidecar

    source = ModelSource(args.store, trust_pickle=args.trust_pickle, legacy_pickle=args.legacy_pickle)
    if bool(args.target) == bool(args.target_name):
        raise ConfigError("give the target as --target FILE or as --store RUN_DIR --target-name NAME (one of them)")
    if args.target_name:
        source.require_store("--target-name")
        target = source.from_store(args.target_name)
        target_desc = {"store": str(args.store), "name": args.target_name,
                       "sha256": source.store.entry(args.target_name)["sha256"]}
    else:
        target, layout = source.read_file(args.target)
        target_desc = {"file": str(args.target), "layout": layout}
    if not str(args.out).endswith(".safetensors"):
        raise ConfigError(f"--out {args.out}: name the output *.safetensors")
    if args.evaluate and source.store is None:
        raise ConfigError("--evaluate needs --store RUN_DIR (its model, data and heads)")
    check_weights_destination(args.out, "--out")
    _, pact_params = collect_params(args, items=args.pact_param, option="--pact-param", all_pact=True)

    vectors, sources = {}, {}
    for spec in args.task_vector:
        task, ft_path, pt_path = parse_task_vector(spec)
        if task in vectors:
            raise ConfigError(f"--task-vector: task {task!r} given twice")
        pt = source.pretrained(pt_path, why=f"--task-vector {spec!r}", hint="write TASK=FINETUNED:PRETRAINED")
        ft = source.from_file(ft_path, like=pt, name=f"task {task!r} checkpoint {ft_path}")
        vectors[task] = task_vector(ft, pt, name=f"task {task!r} ({ft_path})")
        sources[task] = {"finetuned": ft_path, "pretrained": pt_path or f"{args.store}:pretrained"}

    cfg = TransferConfig(alpha=args.alpha, pact=args.pact, pact_params=pact_params or {},
                         conv_as_matrix=args.conv_as_matrix)
    target_name = f"target {args.target or args.target_name}"
    state, diagnostics = transfer(target, vectors, cfg, target_name=target_name)
    sidecar = {"target": target_desc, "task_vectors": sources, "alpha": args.alpha, "pact": args.pact,
               "pact_params": cfg.pact_params, "diagnostics": diagnostics}
    if args.evaluate:  # before writing, so a failed evaluation leaves no output behind
        from pactmerge.analysis.runs import RunEvaluator

        evaluator = RunEvaluator(args.store, split=args.split, device=args.device)
        sidecar["accuracy"] = {"split": args.split, **evaluator(state, list(vectors))}
        for t in vectors:
            show(f"{t}: {sidecar['accuracy'][t]:.4f} ({args.split})")

    side = write_weights_with_sidecar(args.out, state, lambda sha256: {**sidecar, "sha256": sha256},
                                      metadata={"format": "pt", "pactmerge": "transfer"})
    show(f"{args.out} [{side.name}]")
    return 0
