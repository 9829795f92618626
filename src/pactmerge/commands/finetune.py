"""``pactmerge finetune CONFIG --task X | --joint | --sequential``: one fine-tuning stage.

A stored result is kept (the stage is done) only when its file still matches its sha256;
a changed one is named with the commands that redo it.
"""

from pactmerge.commands._study import add_config_arguments, open_context

HELP = "run one fine-tuning stage of a study (one job of a job array)"


def add_arguments(parser):
    add_config_arguments(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", action="append", help="fine-tune on this task alone (repeatable)")
    which.add_argument("--all", action="store_true", help="every task of the config, one after another")
    which.add_argument("--joint", action="store_true", help="joint multi-task fine-tuning")
    which.add_argument("--sequential", action="store_true", help="sequential fine-tuning in the configured order")


def run(args):
    from pactmerge.pipeline import stages

    from pactmerge.pipeline.rundir import verify_stored

    # one job of an array opens the data of its own task only
    ctx = open_context(args, tasks=args.task if args.task else None)
    targets = (["joint"] if args.joint else ["sequential"] if args.sequential else
               [f"finetuned/{ctx.task_key(t)}" for t in (ctx.task_keys if args.all else args.task)])
    verify_stored(ctx.store, [n for n in targets if ctx.store.has(n)])  # a changed entry is not "done"
    if args.joint:
        stages.finetune_joint(ctx)
    elif args.sequential:
        stages.finetune_sequential(ctx)
    else:
        for task in (ctx.task_keys if args.all else args.task):
            stages.finetune_individual(ctx, task)
    return 0
