"""Lightning callbacks: ``MergeCallback`` builds the merged encoders once the fine-tunes exist."""

from pactmerge.callbacks.merge import MergeCallback, MergeSpec, merge_specs
from pactmerge.callbacks.store import StoreEncoderCallback

__all__ = ["MergeCallback", "MergeSpec", "StoreEncoderCallback", "merge_specs"]
