"""``pactmerge finetune CONFIG --task X | --joint | --sequential``: one fine-tuning stage.

A stored result is kept (the stage is done) only when its file still matches its sha256;
a changed one is named with the commands that redo it.
"""

from pactmerge.commands._study import add_config_arguments, open_context

HELP = "run one fine-tuning stage of a study (one job of a job array)"


def add_arguments(parser):
    add_config_arguments(parser)
    which = parser.add_argument_group("what to fit (one or more; in the order joint, sequential, tasks)")
    tasks = which.add_mutually_exclusive_group()
    tasks.add_argument("--task", action="append", help="fine-tune on this task alone (repeatable)")
    tasks.add_argument("--all", action="store_true", help="every task of the config, one after another")
    which.add_argument("--joint", action="store_true", help="joint multi-task fine-tuning")
    which.add_argument("--sequential", action="store_true", help="sequential fine-tuning in the configured order")


def run(args):
    from pactmerge.errors import ConfigError
    from pactmerge.pipeline import stages

    from pactmerge.pipeline.rundir import verify_stored

    if not (args.task or args.all or args.joint or args.sequential):
        raise ConfigError("say what to fit: --task TASK (repeatable), --all, --joint and/or --sequential")
    # one job of an array opens the data of its own tasks only
    only_tasks = args.task if args.task and not (args.joint or args.sequential) else None
    ctx = open_context(args, tasks=only_tasks)
    tasks = ctx.task_keys if args.all else [ctx.task_key(t) for t in args.task or []]
    targets = ["joint"] * args.joint + ["sequential"] * args.sequential + [f"finetuned/{t}" for t in tasks]
    verify_stored(ctx.store, [n for n in targets if ctx.store.has(n)])  # a changed entry is not "done"
    if args.joint:
        stages.finetune_joint(ctx)
    if args.sequential:
        stages.finetune_sequential(ctx)
    for task in tasks:
        stages.finetune_individual(ctx, task)
    return 0
