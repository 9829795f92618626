"""``pactmerge run [CONFIG]``: the whole study, resumable."""

from pactmerge.commands._study import add_config_arguments, open_study

HELP = "run the whole study (fine-tune, merge, evaluate, report); rerun to continue an interrupted one"


def add_arguments(parser):
    add_config_arguments(parser)


def run(args):
    study = open_study(args)
    table = study.run_all()
    print(table)
    print(f"report: {study.run_dir}/results.md, results.csv, results.json, plots/")
    return 0
