"""A command's result on standard output: tables, file paths, the report, a line to run next.

Results go to stdout so they can be read and piped; progress and diagnostics go through
``logging`` (stderr, set up by ``pactmerge.cli``). Every command writes its result here.
"""

from __future__ import annotations

import sys


def show(*lines: str) -> None:
    """Write ``lines`` to standard output, one per line."""
    for line in lines:
        sys.stdout.write(f"{line}\n")
    sys.stdout.flush()
