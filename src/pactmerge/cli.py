"""The ``pactmerge`` command line: one sub-command per module in ``pactmerge.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports happen inside ``run``, so ``pactmerge --help`` is quick.
"""

from __future__ import annotations

import argparse
import errno
import importlib
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s own arguments are built (every command's with None), so a
    command never pays for another's imports."""
    parser = argparse.ArgumentParser(prog="pactmerge", description=__doc__.splitlines()[0])
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true", help="debug output, and other libraries' info lines")
    loud.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"pactmerge.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        if command is None or name == command:
            module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (the first word that is a command), or None."""
    return next((a for a in argv if a in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    from pactmerge import console

    # pactmerge's own progress at INFO; other libraries' chatter only in the run's log.txt
    console.configure(console.VERBOSE if args.verbose else console.QUIET if args.quiet else console.NORMAL)
    try:
        return int(args._run(args) or 0)
    except PactmergeError as exc:
        print(f"pactmerge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"pactmerge {args.command}: error: {exc.strerror or 'no space left on device'}{where}. Finished work "
              "is kept and nothing half-written is; free space (or use another --output-dir) and rerun to continue",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pactmerge {args.command}: interrupted; finished work is kept, rerun to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
