"""Lightning callbacks for Trainers of your own.

- ``MergeCallback``: merge the model a fit just trained with other fine-tunes (any method, with or
  without PACT) and install the merged weights when training ends.
- ``StoreEncoderCallback``: store a finished fine-tune in a run directory's checkpoint store.
- ``StepProgressBar``: one progress bar per fit, counted in optimizer steps (the study's fits use it).

This package depends only on ``merging``, ``checkpoints`` and the shared helpers, so the pipeline
may use it and a Lightning user can take it without the rest of pactmerge.
"""

from pactmerge.callbacks.merge import MergeCallback
from pactmerge.callbacks.progress import StepProgressBar
from pactmerge.callbacks.store import StoreEncoderCallback

__all__ = ["MergeCallback", "StepProgressBar", "StoreEncoderCallback"]
