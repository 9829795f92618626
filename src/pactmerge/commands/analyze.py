"""``pactmerge analyze``: load-bearing-wall diagnostics of fine-tuned encoders (JSON + PNG)."""

from __future__ import annotations

import logging
from pathlib import Path

from pactmerge.commands._output import show

log = logging.getLogger(__name__)

HELP = "LBW diagnostics: intrusion energy, task-core similarity, interference (before/after PACT), perturbation curves"


def add_arguments(parser):
    src = parser.add_argument_group("models (a run directory, or plain files)")
    src.add_argument("--store", metavar="RUN_DIR", help="run directory with pretrained and finetuned/<task> entries")
    src.add_argument("--pretrained", metavar="FILE", help="pre-trained encoder file (open_clip or HF layout)")
    src.add_argument("--finetuned", nargs="+", default=[], metavar="[TASK=]FILE",
                     help="fine-tuned encoder files (task name defaults to the file name)")
    src.add_argument("--tasks", help="comma-separated subset of the store's fine-tuned tasks")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (lbw.json and PNG figures)")
    parser.add_argument("--K", type=int, default=15, help="pre-trained core rank")
    parser.add_argument("--k", type=int, default=8, help="task core rank")
    parser.add_argument("--top-fraction", type=float, default=0.25, help="share of keys averaged as 'most affected'")
    parser.add_argument("--no-pact", action="store_true", help="skip the after-PACT measurements")
    parser.add_argument("--pact-param", action="append", default=[], metavar="KEY=VALUE",
                        help="other PACT parameters for the after-PACT view (e.g. protect=self); repeatable")
    parser.add_argument("--conv-as-matrix", action="store_true", help="treat convolution kernels as matrices")
    parser.add_argument("--svd", choices=("exact", "randomized"), default="exact",
                        help="truncated SVDs of the cores (randomized: faster on large matrices)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="fnmatch pattern of keys to skip")
    pert = parser.add_argument_group("scalar view (needs --store with heads and data)")
    pert.add_argument("--perturb", action="store_true", help="accuracy under noise in the LBW mask vs a random mask")
    pert.add_argument("--fraction", type=float, default=0.01, help="share of each matrix's entries in a mask")
    pert.add_argument("--strengths", default="0,0.25,0.5,1,2", help="comma-separated relative noise strengths")
    pert.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--device", default="auto", help="where the linear algebra and evaluation run (auto: CUDA if any)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickled torch files")
    parser.add_argument("--legacy-pickle", action="store_true", help="read torch.save(model) pickles "
                        "(task_vectors, tall_masks, AdaMerging) without running their code")


def _task_file(spec: str) -> tuple[str, str]:
    task, sep, path = spec.partition("=")
    if sep and task and not Path(spec).exists():
        return task, path
    name = Path(spec).name
    for suffix in (".safetensors", ".pt", ".pth", ".bin"):
        name = name.removesuffix(suffix)
    return name, spec


def load_models(args):
    """(pretrained state, {task: fine-tuned state}, provenance) from a store or from plain files."""
    from pactmerge.commands._models import ModelSource
    from pactmerge.errors import ConfigError, StageError

    if args.store:
        if args.pretrained or args.finetuned:
            raise ConfigError("give either --store or --pretrained/--finetuned files, not both")
        source = ModelSource(args.store)
        pre = source.pretrained(why="the analysis")
        have = source.finetuned_tasks()
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else have
        missing = [t for t in tasks if t not in have]
        if missing or not tasks:
            raise StageError(f"{args.store}: no fine-tuned model for {missing or 'any task'} (have: {have or 'none'}); "
                             "fine-tune or import them first")
        return pre, {t: source.from_store(f"finetuned/{t}") for t in tasks}, {"store": str(args.store)}
    if not args.pretrained or not args.finetuned:
        raise ConfigError("give --store RUN_DIR, or --pretrained FILE and --finetuned FILE ... (at least one)")
    source = ModelSource(trust_pickle=args.trust_pickle, legacy_pickle=args.legacy_pickle)
    pre = source.pretrained(args.pretrained)
    ft, files = {}, {}
    for spec in args.finetuned:
        task, path = _task_file(spec)
        if task in ft:
            raise ConfigError(f"--finetuned: two files for task {task!r}; name them TASK=FILE")
        ft[task] = source.from_file(path, like=pre, name=f"{path} (task {task!r})")
        files[task] = path
    return pre, ft, {"pretrained": args.pretrained, "finetuned": files}


def run(args) -> int:
    from pactmerge.analysis.lbw import LBWConfig, analyze_states
    from pactmerge.analysis.plots import report_figures
    from pactmerge.coerce import parse_key_values
    from pactmerge.errors import ConfigError, StageError
    from pactmerge.fileio import write_json_atomic

    if args.perturb and not args.store:
        raise StageError("--perturb evaluates accuracy, which needs a run directory with heads and data: pass --store RUN_DIR")
    try:
        strengths = tuple(float(s) for s in args.strengths.split(","))
    except ValueError as exc:
        raise ConfigError(f"--strengths {args.strengths!r}: expected comma-separated numbers") from exc
    try:
        pact_params = parse_key_values(args.pact_param, "--pact-param")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cfg = LBWConfig(K=args.K, k=args.k, top_fraction=args.top_fraction, pact=not args.no_pact,
                    pact_params=pact_params, conv_as_matrix=args.conv_as_matrix,
                    exclude=tuple(args.exclude), svd=args.svd, device=args.device)
    pre, ft, provenance = load_models(args)
    report = analyze_states(pre, ft, cfg)
    report["inputs"] = provenance
    if args.perturb:
        from pactmerge.analysis.perturb import PerturbConfig, perturbation_curves
        from pactmerge.analysis.runs import RunEvaluator

        pcfg = PerturbConfig(fraction=args.fraction, strengths=strengths, split=args.split)
        evaluator = RunEvaluator(args.store, split=args.split, device=args.device)
        report["perturbation"] = perturbation_curves(pre, ft, list(report["keys"]), evaluator.accuracy, pcfg)
        report["perturbation_config"] = {"fraction": pcfg.fraction, "strengths": list(strengths), "split": args.split}
    out = Path(args.out)
    figures = report_figures(report, out)
    write_json_atomic(out / "lbw.json", report)
    _print_summary(report)
    log.info("wrote %s and %d figures in %s", out / "lbw.json", len(figures), out)
    return 0


def _print_summary(report) -> None:
    by_task = report["intrusion"]["by_task"]
    show(f"{'task':<20} {'E_in before':>12} {'E_in after':>12}")
    for t, v in by_task.items():
        after = f"{v['after']:.4f}" if "after" in v else "-"
        show(f"{t:<20} {v['before']:>12.4f} {after:>12}")
    tasks = report["tasks"]
    if len(tasks) > 1:
        for phase, inf in report["interference"].items():
            m = inf["all"]
            off = [m[i][j] for i in range(len(m)) for j in range(len(m)) if i != j]
            show(f"mean interference ({phase} PACT, all keys): {sum(off) / len(off):.4f}")
