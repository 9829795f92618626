"""``pactmerge evaluate CONFIG``: test accuracy of every model of a study (``stages.evaluation_plan``:
zero-shot, individual, joint, sequential and merged).

Every stored file the evaluation relies on (the pre-trained encoder, the heads and each
evaluated entry) is checked against its sha256 first, also when its metrics are already
recorded, as ``pactmerge run`` checks the merge inputs.
"""

from pactmerge.commands._study import add_config_arguments, open_context

HELP = "evaluate every model of a study (zero-shot, individual, joint, sequential, merged) on the test splits"


def add_arguments(parser):
    add_config_arguments(parser)


def run(args):
    from pactmerge.pipeline import stages
    from pactmerge.pipeline.rundir import verify_stored

    ctx = open_context(args)
    relied_on = ["pretrained", *(f"heads/{t}" for t in ctx.task_keys),
                 *(name for name, _ in stages.evaluation_plan(ctx))]
    verify_stored(ctx.store, [n for n in dict.fromkeys(relied_on) if ctx.store.has(n)])
    stages.evaluate(ctx)
    return 0
