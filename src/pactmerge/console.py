"""What the terminal shows, and what goes to the run's log file.

The console gets pactmerge's own progress (INFO, or DEBUG with ``-v``, WARNING with ``--quiet``)
and other libraries' warnings and errors; the run directory's ``log.txt`` gets every record at
INFO or above, third-party chatter included. Console lines are written through ``tqdm.write``,
so they never land inside a progress bar. Warnings that third-party internals raise on every
run, and that a user cannot act on, are filtered one known message at a time
(``quiet_known_warnings``); no category is silenced wholesale.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path

QUIET, NORMAL, VERBOSE = -1, 0, 1

_TAG = "_pactmerge_handler"  # marks the handlers installed here, so configuring twice replaces them

# (message regex, category, module regex) of third-party warnings with nothing for a user to do
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", Warning, r"pytorch_lightning"),
    (r"The number of training batches \(\d+\) is smaller than the logging interval", Warning, r"pytorch_lightning"),
    (r"The '\w+_dataloader' does not have many workers", Warning, r"pytorch_lightning"),
    (r"Found \d+ module\(s\) in eval mode", Warning, r"pytorch_lightning"),
    (r"You defined a `validation_step` but have no `val_dataloader`", Warning, r"pytorch_lightning"),
    (r"`training_step` returned `None`", Warning, r"pytorch_lightning"),
    (r"Checkpoint directory .* exists and is not empty", Warning, r"pytorch_lightning"),
    (r"This DataLoader will create \d+ worker processes", Warning, r"torch"),
    (r"Precision bf16-mixed is not supported by the model summary", Warning, r"pytorch_lightning"),
)
# third-party log lines that pactmerge reports itself, in its own words (kept in log.txt)
KNOWN_LOG_LINES: tuple[str, ...] = (
    r"^No pretrained weights loaded for model ",  # open_clip; pactmerge logs the random init itself
    # Lightning, on a machine with SLURM's srun on the PATH: a local run is not a SLURM job
    r"(?s).*The `srun` command is available on your system but is not used",
)
# Lightning's INFO lines that repeat on every fit (device summary, tips, loader settings)
_LIGHTNING_CHATTER = ("pytorch_lightning", "lightning", "lightning_fabric", "lightning.pytorch")


def quiet_known_warnings() -> None:
    """Install the narrow filters of ``KNOWN_WARNINGS`` (idempotent)."""
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


class _TqdmStream:
    """A file-like console stream whose writes go through ``tqdm.write`` (bars are redrawn below)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.rstrip("\n")
        if text:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)

    def flush(self) -> None:
        self.stream.flush()


class _ConsoleFilter(logging.Filter):
    """pactmerge's records from ``own`` up; everyone else's from ``other`` up."""

    def __init__(self, own: int, other: int) -> None:
        super().__init__()
        self.own, self.other = own, other

    def filter(self, record: logging.LogRecord) -> bool:
        mine = record.name == "pactmerge" or record.name.startswith("pactmerge.")
        if not mine and any(re.match(p, record.getMessage()) for p in KNOWN_LOG_LINES):
            return False
        return record.levelno >= (self.own if mine else self.other)


def configure(verbosity: int = NORMAL, stream=None) -> logging.Handler:
    """Set up console logging for a command (replacing an earlier call's handler); returns the handler."""
    own = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}[verbosity]
    other = {QUIET: logging.ERROR, NORMAL: logging.WARNING, VERBOSE: logging.INFO}[verbosity]
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _TAG, None) == "console"]:
        root.removeHandler(h)
    handler = logging.StreamHandler(_TqdmStream(stream or sys.stderr))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    handler.addFilter(_ConsoleFilter(own, other))
    setattr(handler, _TAG, "console")
    root.addHandler(handler)
    root.setLevel(min(own, logging.INFO))
    logging.getLogger("pactmerge").setLevel(own if own < logging.INFO else logging.INFO)
    for name in _LIGHTNING_CHATTER:  # Lightning configures its loggers itself; route them through root
        lg = logging.getLogger(name)
        lg.propagate = True
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
    logging.captureWarnings(True)
    quiet_known_warnings()
    return handler


def attach_run_log(run_dir: str | Path) -> logging.Handler:
    """Append every record at INFO or above to ``run_dir/log.txt`` (one handler per path)."""
    path = (Path(run_dir) / "log.txt").resolve()
    root = logging.getLogger()
    for h in root.handlers:
        if getattr(h, _TAG, None) == f"file:{path}":
            return h
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           datefmt="%Y-%m-%d %H:%M:%S"))
    setattr(handler, _TAG, f"file:{path}")
    root.addHandler(handler)
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


def detach_run_logs() -> None:
    """Remove (and close) every run-log handler installed by ``attach_run_log``."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if str(getattr(h, _TAG, "")).startswith("file:")]:
        root.removeHandler(h)
        h.close()
