"""User-facing errors.

Every error a user can cause (bad file, bad option, bad config key, missing stage) is a
``PactmergeError``: the CLI prints its message without a traceback and exits non-zero.
Messages name the file, key or option at fault and say what to do.
"""


class PactmergeError(Exception):
    """Base class of errors caused by input, not by a bug."""


class ConfigError(PactmergeError, ValueError):
    """A bad option, config key or value."""


class MergeError(PactmergeError, ValueError):
    """Inputs to a merge that cannot be merged (mismatched keys, NaN, bad ranks, ...)."""


class CheckpointError(PactmergeError):
    """A missing, truncated, mismatched or untrusted checkpoint file."""


class DataError(PactmergeError):
    """Missing or malformed task data."""


class StageError(PactmergeError):
    """A pipeline stage whose inputs do not exist yet."""
