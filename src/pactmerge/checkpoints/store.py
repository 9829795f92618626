"""``CheckpointStore``: one directory per run, safetensors files plus ``manifest.json``.

Layout::

    <root>/manifest.json                 identity (model config, pre-trained hash) + entries
    <root>/pretrained.safetensors        entry names map to files: "finetuned/mnist" ->
    <root>/finetuned/mnist.safetensors   finetuned/mnist.safetensors, heads -> heads/<task>
    <root>/heads/mnist.safetensors       (one tensor "head", (C, D) float32)
    <root>/lightning/<stage>/            Lightning's resumable .ckpt files
    <root>/<name>.meta.json              sidecar of each entry: its manifest entry (+ "name")
    <root>/identity.json                 copy of the manifest's identity

Every file is written atomically; the manifest is read-modify-written under an ``fcntl`` lock,
so the processes of a job array may save into the same store concurrently. Loads verify the
sha256 recorded in the manifest. The sidecars let ``pactmerge status --reindex`` rebuild a lost
or damaged manifest (``checkpoints.manifest``); a store whose manifest is missing while it holds
checkpoints, or is invalid, is refused with that command rather than silently started afresh.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from pactmerge.checkpoints.manifest import (
    IDENTITY,
    MANIFEST,
    NOT_KEPT,
    NAME_RE,
    ManifestError,
    kind_of,
    manifest_lock,
    read_manifest,
    reindex_command,
    sidecar_path,
    store_files,
)
from pactmerge.errors import CheckpointError
from pactmerge.fileio import load_state_dict, save_safetensors_atomic, sha256_file, write_json_atomic

_PACKAGES = ("pactmerge", "torch", "open_clip_torch", "timm", "pytorch-lightning", "safetensors")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Content hash of a state dict: names, dtypes, shapes and bytes, independent of file format."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON-like values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: store has {a!r}, given {b!r}"]


class CheckpointStore:
    """The checkpoint directory of one run (see the module docstring)."""

    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        self.root = Path(root)
        if not (self.root / MANIFEST).is_file():
            if self.root.is_dir() and store_files(self.root):
                raise ManifestError(
                    f"{self.root / MANIFEST}: missing, but {self.root} holds checkpoints "
                    f"({', '.join(list(store_files(self.root))[:3])}, ...); rebuild the manifest from them and their "
                    f"sidecars with `{reindex_command(self.root)}` (starting afresh would redo finished work)")
            if not create:
                raise CheckpointError(f"{self.root}: not a checkpoint store (no {MANIFEST}); run the fine-tuning "
                                      "stage first or check the path")
            self.root.mkdir(parents=True, exist_ok=True)
            with self._locked():
                if not (self.root / MANIFEST).is_file():
                    write_json_atomic(self.root / MANIFEST, {"format": 1, "identity": None, "entries": {}})
        self.manifest  # noqa: B018 - an invalid manifest is refused here, with the recovery command

    # -- manifest --------------------------------------------------------------------------
    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return manifest_lock(self.root)

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as on disk now (re-read at every access); ``ManifestError`` when it is invalid."""
        return read_manifest(self.root)

    @contextlib.contextmanager
    def _edit(self) -> Iterator[dict[str, Any]]:
        with self._locked():
            manifest = self.manifest
            yield manifest
            write_json_atomic(self.root / MANIFEST, manifest)

    def bind(self, model_config: Mapping[str, Any], pretrained_sha256: str) -> None:
        """Record the model identity on first call; afterwards refuse any other identity."""
        given = {"model_config": json.loads(json.dumps(model_config)), "pretrained_sha256": pretrained_sha256}
        with self._edit() as manifest:
            have = manifest.get("identity")
            if have is None:
                manifest["identity"] = given
                write_json_atomic(self.root / IDENTITY, given)
                return
        diffs = _diff(have, given)
        if diffs:
            raise CheckpointError(
                f"{self.root}: this store was written for another model or other pre-trained weights: "
                + "; ".join(diffs[:8]) + ". Use another run directory, or the model the store was written with.")

    # -- states ----------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise CheckpointError(f"invalid checkpoint name {name!r}: use pretrained, joint, sequential, "
                                  "finetuned/<task>, merged/<id> or heads/<task>")
        return self.root / f"{name}.safetensors"

    def save_state(self, name: str, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> Path:
        """Write ``state`` to ``path(name)`` atomically and record it; returns the path.

        ``meta`` (JSON-able) is stored in the entry: e.g. ``task``/``tasks``, ``recipe``,
        ``steps``, ``metrics``. The entry is also written to the sidecar ``<name>.meta.json``."""
        path = self.path(name)
        save_safetensors_atomic(path, state, metadata={"pactmerge_name": name})
        entry = {
            "file": path.relative_to(self.root).as_posix(), "sha256": sha256_file(path), "kind": kind_of(name),
            "tensors": len(state), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(), **json.loads(json.dumps(dict(meta or {}), default=str)),
        }
        with self._edit() as manifest:
            write_json_atomic(sidecar_path(self.root, name), {"name": name, **entry})
            manifest["entries"][name] = entry
        return path

    def has(self, name: str) -> bool:
        entry = self.manifest["entries"].get(name)
        return entry is not None and (self.path(name).is_file() or entry.get("weights") == NOT_KEPT)

    def weights_kept(self, name: str) -> bool:
        """Whether entry ``name``'s weights file is kept (``drop_weights`` removes a merge's)."""
        return self.entry(name).get("weights") != NOT_KEPT

    def drop_weights(self, name: str) -> int:
        """Remove entry ``name``'s weights file, keeping its record (sha256 and all) marked ``weights: "not
        kept"``: ``has`` stays true, ``load_state`` names the way back. Returns the bytes freed."""
        path = self.path(name)
        with self._edit() as manifest:
            if name not in manifest["entries"]:
                raise CheckpointError(f"{self.root}: no checkpoint {name!r}")
            manifest["entries"][name]["weights"] = NOT_KEPT
            write_json_atomic(sidecar_path(self.root, name), {"name": name, **manifest["entries"][name]})
        size = path.stat().st_size if path.is_file() else 0
        path.unlink(missing_ok=True)
        return size

    def entry(self, name: str) -> dict[str, Any]:
        try:
            return self.manifest["entries"][name]
        except KeyError:
            raise CheckpointError(f"{self.root}: no checkpoint {name!r} (have: {', '.join(self.names()) or 'none'}); "
                                  "run the stage that produces it first") from None

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self.manifest["entries"] if n.startswith(prefix))

    def update_meta(self, name: str, **fields: Any) -> None:
        with self._edit() as manifest:
            if name not in manifest["entries"]:
                raise CheckpointError(f"{self.root}: no checkpoint {name!r} to update")
            manifest["entries"][name].update(json.loads(json.dumps(fields, default=str)))
            write_json_atomic(sidecar_path(self.root, name), {"name": name, **manifest["entries"][name]})

    def load_state(self, name: str) -> dict[str, torch.Tensor]:
        """Load a state dict after checking its sha256 against the manifest."""
        entry = self.entry(name)
        path = self.root / entry["file"]
        if not path.is_file() and entry.get("weights") == NOT_KEPT:
            raise CheckpointError(f"{name}: its weights were not kept after its evaluation (merge.keep_weights: "
                                  f"false); `pactmerge export --store {self.root} --name {name} --format open_clip --out FILE` makes "
                                  "them again from the stored fine-tunes")
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in the manifest as {name!r} but missing; rerun its stage")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise CheckpointError(
                f"{path}: sha256 {actual[:16]}... does not match the manifest ({entry['sha256'][:16]}...); the file "
                f"was changed or truncated after it was written. Set it aside with `pactmerge status --drop-corrupt "
                f"{self.root}`; the next run then makes {name!r} again (and nothing else).")
        return load_state_dict(path)

    # -- heads -----------------------------------------------------------------------------
    def save_head(self, task: str, head: torch.Tensor, meta: Mapping[str, Any] | None = None) -> Path:
        return self.save_state(f"heads/{task}", {"head": head.detach().float()},
                               {"task": task, "shape": list(head.shape), **dict(meta or {})})

    def load_head(self, task: str) -> torch.Tensor:
        return self.load_state(f"heads/{task}")["head"]

    def has_head(self, task: str) -> bool:
        return self.has(f"heads/{task}")

    def lightning_dir(self, stage: str) -> Path:
        """Directory for Lightning's ``.ckpt`` files of ``stage`` (e.g. ``finetuned/mnist``)."""
        path = self.root / "lightning" / stage
        path.mkdir(parents=True, exist_ok=True)
        return path
