"""The ``pactmerge`` command line: one sub-command per module in ``pactmerge.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports happen inside ``run``, so ``pactmerge --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pactmerge.errors import PactmergeError

# sub-command name -> module under pactmerge.commands
COMMANDS = {
    "run": "run",
    "finetune": "finetune",
    "merge": "merge",
    "evaluate": "evaluate",
    "report": "report",
    "slurm": "slurm",
    "analyze": "analyze",
    "transfer": "transfer",
    "import": "import_cmd",
    "export": "export",
    "status": "status",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pactmerge", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"pactmerge.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # pactmerge's own progress at INFO; other libraries' chatter only at WARNING unless -v
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("pactmerge").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args._run(args) or 0)
    except PactmergeError as exc:
        print(f"pactmerge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pactmerge {args.command}: interrupted; finished work is kept, rerun to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
