"""pactmerge: fine-tune CLIP image encoders per task with PyTorch Lightning, then merge them.

Subpackages (imports run one way: merging <- checkpoints <- datamodules/pipeline/callbacks <- cli):

- ``pactmerge.merging``: pure torch task vectors, merge methods and PACT; no Lightning import.
- ``pactmerge.checkpoints``: the checkpoint store (safetensors + JSON manifest).
- ``pactmerge.datamodules``: task registry and LightningDataModules.
- ``pactmerge.pipeline``: model loading, heads, the ``CLIPFineTuner`` and run orchestration.
- ``pactmerge.callbacks``: Lightning callbacks, the ``MergeCallback`` among them.
"""

__version__ = "0.1.0"
