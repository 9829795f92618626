"""``pactmerge run [CONFIG]``: the whole study, resumable."""

from pactmerge.commands._study import add_config_arguments, load_args_config

HELP = "run the whole study (fine-tune, merge, evaluate, report); rerun to continue an interrupted one"


def add_arguments(parser):
    add_config_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config, tasks, merges and stage plan; train nothing, write nothing")


def run(args):
    from pactmerge.pipeline.context import RunContext, RunLock, claim
    from pactmerge.pipeline.study import describe, run_study

    cfg, text = load_args_config(args)
    if args.dry_run:
        print(describe(RunContext(cfg)))
        return 0
    ctx = RunContext(cfg).resolve()  # a bad model or data source fails before the directory is touched
    with RunLock(ctx.run_dir):
        claim(ctx, force=args.force, config_text=text)
        table = run_study(ctx)
    print(table)
    print(f"report: {ctx.run_dir}/results.md, results.csv, results.json, plots/")
    return 0
