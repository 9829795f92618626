"""``pactmerge evaluate CONFIG``: test accuracy of the zero-shot, individual, joint and sequential models."""

from pactmerge.commands._study import add_config_arguments, open_context

HELP = "evaluate the zero-shot, individual, joint and sequential encoders of a study on the test splits"


def add_arguments(parser):
    add_config_arguments(parser)


def run(args):
    from pactmerge.pipeline import stages

    stages.evaluate(open_context(args))
    return 0
