"""``pactmerge run [CONFIG]``: the whole study, resumable."""

from pactmerge.commands._output import show
from pactmerge.commands._study import add_config_arguments, load_args_config

HELP = "run the whole study (fine-tune, merge, evaluate, report); rerun to continue an interrupted one"


def add_arguments(parser):
    add_config_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config, tasks, merges and stage plan; train nothing, write nothing")
    parser.add_argument("--seeds", type=_seed_list, metavar="S,S,...",
                        help="seed replicates: run the whole study once per seed, each in OUTPUT_DIR/seed-<s>/, "
                             "and report mean ± std over seeds (sets the config's seeds)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run the fine-tunes, then the merges, in N processes side by side on the CPU, each "
                             "with an Nth of the threads (faster for small models on many cores; fits differ from "
                             "--jobs 1 as a different thread count makes them, each reproducible); evaluation and "
                             "the report run here")


def _seed_list(text: str) -> list[int]:
    import argparse

    try:
        seeds = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integer seeds, e.g. 0,1,2") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed, e.g. 0,1,2")
    return seeds


def log_header(ctx) -> None:
    """What will run and where it writes, before the first stage."""
    import logging

    from pactmerge.pipeline.merge_plan import plan_merges

    cfg, log = ctx.cfg, logging.getLogger("pactmerge.run")
    parts = [f"{len(ctx.task_keys)} individual fine-tunes of {cfg.recipe.max_steps} steps"]
    if cfg.comparisons.joint:
        parts.append("joint")
    if cfg.comparisons.sequential:
        parts.append("sequential")
    if cfg.pool is not None:  # published checkpoints: imported, not fine-tuned
        parts = [f"import of {len(ctx.task_keys)} fine-tunes" + "".join(
            f" + {n}" for n in ("joint", "sequential") if getattr(cfg.comparisons, n)) + " (pool)"]
    log.info("pactmerge run: model %s; tasks %s", cfg.model.name, ", ".join(ctx.task_keys))
    log.info("stages: %s; %d merges with alpha chosen on validation data; evaluation; report",
             ", ".join(parts), len(plan_merges(cfg.merge)))
    log.info("writing to %s (log: %s/log.txt); each stage shows its progress and ETA", ctx.run_dir, ctx.run_dir)


def run(args):
    from pactmerge.pipeline.context import RunContext
    from pactmerge.pipeline.rundir import RunLock
    from pactmerge.pipeline.study import describe, open_study, run_study

    if getattr(args, "seeds", None):
        args.overrides = [*args.overrides, f"seeds={args.seeds}"]
    cfg, text = load_args_config(args)
    if args.jobs != 1 and cfg.seeds:
        from pactmerge.errors import ConfigError

        raise ConfigError("--jobs runs the fine-tunes of one study; with seed replicates run each seed's study "
                          "(`pactmerge run CONFIG --set seed=S --output-dir DIR/seed-S --jobs N`), or drop --jobs")
    if cfg.seeds and not args.dry_run:
        return _run_replicates(cfg, text, args)
    if args.dry_run and cfg.seeds:
        from pactmerge.pipeline.replicates import replicate_config

        show(f"seed replicates {', '.join(map(str, cfg.seeds))}: each study below once per seed (seed and "
             f"recipe.seed set to it) in {cfg.output_dir}/seed-<s>/, then the report over seeds; seed {cfg.seeds[0]}:")
        cfg = replicate_config(cfg, cfg.seeds[0])
    if args.dry_run:
        show(describe(RunContext(cfg)))
        return 0
    from pactmerge.console import attach_run_log

    from pactmerge.pipeline.replicates import refuse_replicate_dir

    refuse_replicate_dir(cfg.output_dir)
    log_header(RunContext(cfg))
    with RunLock(cfg.output_dir):  # a bad model or data source fails before the directory is claimed
        ctx = open_study(cfg, force=args.force, config_text=text)
        attach_run_log(ctx.run_dir)
        table = run_study(ctx, jobs=args.jobs, config_argv=_config_argv(args))
    show(table)
    show(f"report: {ctx.run_dir}/results.md, results.csv, results.json, plots/")
    return 0


def _config_argv(args) -> list[str]:
    """The config path and options of this command, for the worker processes of ``--jobs``."""
    from pactmerge.pipeline.config import DEFAULT_CONFIG

    argv = [args.config or str(DEFAULT_CONFIG)]
    for o in args.overrides:
        argv += ["--set", o]
    return argv + (["--output-dir", args.output_dir] if args.output_dir else [])


def _run_replicates(cfg, text, args):
    from pactmerge.console import attach_run_log
    from pactmerge.pipeline.replicates import run_replicates

    attach_run_log(cfg.output_dir)
    show(run_replicates(cfg, force=args.force, config_text=text))
    show(f"report over seeds {', '.join(map(str, cfg.seeds))}: {cfg.output_dir}/results.md, results.csv, "
         f"results.json; each replicate in {cfg.output_dir}/seed-<s>/")
    return 0
