"""Read the weights of a ``torch.save(model)`` pickle without running code from it.

The most used public fine-tuned CLIP checkpoints of the model-merging literature
(task_vectors, tall_masks, AdaMerging, TSV/Iso) are pickles of whole model objects:
``src.modeling.ImageEncoder`` (``.model`` an open_clip ``CLIP`` whose ``.visual`` is an
``open_clip.model.VisualTransformer`` in old open_clip versions, ``VisionTransformer`` in newer
ones), sometimes with the training transforms as attributes. ``torch.load`` needs those projects'
code on the path, and unpickling them may run any code the file names.

One module per job:

* ``unpickler``: the restricted unpickler (inert placeholders, allowed reconstructors, refusals);
* ``storage``: the zip archive and the pre-1.6 stream formats of ``torch.save``;
* ``graph``: the walk of the object graph and the tower found by ``interop.layout.detect_layout``;
* ``loader``: ``read_legacy_pickle`` and the dispatch between state-dict files and pickled models
  (``read_state_file``, ``load_encoder``), used by every command and by the ``pool:`` section.
"""

from pactmerge.interop.legacy.loader import (
    LegacyCheckpoint,
    load_encoder,
    looks_like_pickled_model,
    read_legacy_pickle,
    read_state_file,
)
from pactmerge.interop.legacy.unpickler import UnsafePickleError

__all__ = ["LegacyCheckpoint", "UnsafePickleError", "load_encoder", "looks_like_pickled_model",
           "read_legacy_pickle", "read_state_file"]
