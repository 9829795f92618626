"""pactmerge.checkpoints: the checkpoint store (safetensors + JSON manifest + per-entry sidecars).

``pactmerge.checkpoints.manifest`` reads a store's records without importing torch; the
names of ``store`` (which needs torch) are imported on first use, so ``pactmerge status``
stays fast.
"""

from pactmerge.checkpoints.manifest import MANIFEST, ManifestError

_FROM_STORE = ("CheckpointStore", "package_versions", "state_sha256")

__all__ = ["MANIFEST", "ManifestError", *_FROM_STORE]


def __getattr__(name: str):
    if name in _FROM_STORE:
        from pactmerge.checkpoints import store

        return getattr(store, name)
    raise AttributeError(f"module 'pactmerge.checkpoints' has no attribute {name!r}")
