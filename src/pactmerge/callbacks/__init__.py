"""Lightning callbacks: ``StoreEncoderCallback`` stores a finished fine-tune; ``MergeCallback`` runs the
merge stage (``pactmerge.pipeline.merge_stage``) when a fit ends."""

from pactmerge.callbacks.merge import MergeCallback
from pactmerge.callbacks.store import StoreEncoderCallback

__all__ = ["MergeCallback", "StoreEncoderCallback"]
