"""pactmerge.checkpoints: the checkpoint store (safetensors + JSON manifest)."""

from pactmerge.checkpoints.store import (
    MANIFEST,
    CheckpointStore,
    import_open_clip,
    package_versions,
    state_sha256,
)

__all__ = ["MANIFEST", "CheckpointStore", "import_open_clip", "package_versions", "state_sha256"]
