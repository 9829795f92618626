"""``pactmerge report RUN_DIR``: regenerate results.json/csv/md and the plots from a run directory."""

from pactmerge.commands._output import show

HELP = "write results.json, results.csv, results.md and plots for a run directory"


def add_arguments(parser):
    parser.add_argument("run_dir", help="a study's output directory")


def run(args):
    from pathlib import Path

    from pactmerge.pipeline.report import write_report

    paths = write_report(args.run_dir)
    show(Path(paths["md"]).read_text())
    for name, path in paths.items():
        show(f"{name}: {path}")
    return 0
