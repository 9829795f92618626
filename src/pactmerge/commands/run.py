"""``pactmerge run [CONFIG]``: the whole study, resumable."""

from pactmerge.commands._study import add_config_arguments, load_args_config

HELP = "run the whole study (fine-tune, merge, evaluate, report); rerun to continue an interrupted one"


def add_arguments(parser):
    add_config_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config, tasks, merges and stage plan; train nothing, write nothing")


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
    log.info("pactmerge run: model %s; tasks %s", cfg.model.name, ", ".join(ctx.task_keys))
    log.info("stages: %s; %d merges with alpha chosen on validation data; evaluation; report",
             ", ".join(parts), len(plan_merges(cfg.merge)))
    log.info("writing to %s (log: %s/log.txt); each stage shows its progress and ETA", ctx.run_dir, ctx.run_dir)


def run(args):
    from pactmerge.pipeline.context import RunContext
    from pactmerge.pipeline.rundir import RunLock
    from pactmerge.pipeline.study import describe, open_study, run_study

    cfg, text = load_args_config(args)
    if args.dry_run:
        print(describe(RunContext(cfg)))
        return 0
    from pactmerge.console import attach_run_log

    log_header(RunContext(cfg))
    with RunLock(cfg.output_dir):  # a bad model or data source fails before the directory is claimed
        ctx = open_study(cfg, force=args.force, config_text=text)
        attach_run_log(ctx.run_dir)
        table = run_study(ctx)
    print(table)
    print(f"report: {ctx.run_dir}/results.md, results.csv, results.json, plots/")
    return 0
