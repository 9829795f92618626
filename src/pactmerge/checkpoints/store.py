"""``CheckpointStore``: one directory per run, safetensors files plus ``manifest.json``.

Layout::

    <root>/manifest.json                 identity (model config, pre-trained hash) + entries
    <root>/pretrained.safetensors        entry names map to files: "finetuned/mnist" ->
    <root>/finetuned/mnist.safetensors   finetuned/mnist.safetensors, heads -> heads/<task>
    <root>/heads/mnist.safetensors       (one tensor "head", (C, D) float32)
    <root>/lightning/<stage>/            Lightning's resumable .ckpt files

Every file is written atomically; the manifest is read-modify-written under an ``fcntl`` lock,
so the processes of a job array may save into the same store concurrently. Loads verify the
sha256 recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from pactmerge.errors import CheckpointError
from pactmerge.fileio import load_state_dict, save_safetensors_atomic, sha256_file, write_json_atomic

MANIFEST = "manifest.json"
_LOCK = ".manifest.lock"
_NAME = re.compile(r"^(pretrained|joint|sequential|finetuned/[A-Za-z0-9_\-]+|merged/[A-Za-z0-9_.+=,\-]+"
                   r"|heads/[A-Za-z0-9_\-]+)$")
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


def _kind(name: str) -> str:
    return name.split("/", 1)[0]


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
            if not create:
                raise CheckpointError(f"{self.root}: not a checkpoint store (no {MANIFEST}); run the fine-tuning "
                                      "stage first or check the path")
            self.root.mkdir(parents=True, exist_ok=True)
            with self._locked():
                if not (self.root / MANIFEST).is_file():
                    write_json_atomic(self.root / MANIFEST, {"format": 1, "identity": None, "entries": {}})

    # -- manifest --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / _LOCK, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as on disk now (re-read at every access)."""
        path = self.root / MANIFEST
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable manifest ({exc})") from exc

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
                return
        diffs = _diff(have, given)
        if diffs:
            raise CheckpointError(
                f"{self.root}: this store was written for another model or other pre-trained weights: "
                + "; ".join(diffs[:8]) + ". Use another run directory, or the model the store was written with.")

    # -- states ----------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise CheckpointError(f"invalid checkpoint name {name!r}: use pretrained, joint, sequential, "
                                  "finetuned/<task>, merged/<id> or heads/<task>")
        return self.root / f"{name}.safetensors"

    def save_state(self, name: str, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> Path:
        """Write ``state`` to ``path(name)`` atomically and record it; returns the path.

        ``meta`` (JSON-able) is stored in the entry: e.g. ``task``/``tasks``, ``recipe``,
        ``steps``, ``metrics``."""
        path = self.path(name)
        save_safetensors_atomic(path, state, metadata={"pactmerge_name": name})
        entry = {
            "file": path.relative_to(self.root).as_posix(), "sha256": sha256_file(path), "kind": _kind(name),
            "tensors": len(state), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(), **json.loads(json.dumps(dict(meta or {}), default=str)),
        }
        with self._edit() as manifest:
            manifest["entries"][name] = entry
        return path

    def has(self, name: str) -> bool:
        return name in self.manifest["entries"] and self.path(name).is_file()

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

    def load_state(self, name: str) -> dict[str, torch.Tensor]:
        """Load a state dict after checking its sha256 against the manifest."""
        entry = self.entry(name)
        path = self.root / entry["file"]
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in the manifest as {name!r} but missing; rerun its stage")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise CheckpointError(
                f"{path}: sha256 {actual[:16]}... does not match the manifest ({entry['sha256'][:16]}...); the file "
                f"was changed or truncated after it was written. Delete it and rerun the stage that makes {name!r}.")
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


def import_open_clip(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The image-tower state dict (``visual.`` prefix stripped) of an open_clip full-model state dict file."""
    sd = load_state_dict(path, trust_pickle=trust_pickle)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    visual = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    if not visual:
        raise CheckpointError(f"{path}: no image-tower keys ('visual.*') in this file; is it an open_clip CLIP "
                              f"state dict? (first keys: {list(sd)[:3]})")
    return visual
