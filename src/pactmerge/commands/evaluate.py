"""``pactmerge evaluate CONFIG``: test accuracy of the zero-shot, individual, joint and sequential models."""

from pactmerge.commands._study import add_config_arguments, open_study

HELP = "evaluate the zero-shot, individual, joint and sequential encoders of a study on the test splits"


def add_arguments(parser):
    add_config_arguments(parser)


def run(args):
    study = open_study(args)
    study.evaluate()
    return 0
