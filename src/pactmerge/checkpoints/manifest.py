"""The store's records without torch: manifest checks, entry sidecars, sha256 checks, reindex, corrupt entries.

This module imports neither torch nor anything that does (``pactmerge.fileio``, whose hashing it
uses, is torch-free too), so ``pactmerge status`` reads a run directory in a fraction of a second.

Records of a store (see ``store.py`` for the layout):

* ``manifest.json``: ``{"format": 1, "identity": ..., "entries": {name: entry}}``; an entry has at
  least ``file`` (relative path) and ``sha256`` (of the file's bytes);
* ``<name>.meta.json`` beside each ``<name>.safetensors``: the entry itself plus ``name``
  (written by ``CheckpointStore.save_state`` / ``update_meta`` since sidecars exist);
* ``identity.json``: the model identity the store is bound to (a copy of the manifest's).

``reindex`` rebuilds ``manifest.json`` from the files and their sidecars. A store written
before sidecars existed is reindexed only in part: its pre-trained, head and fine-tuned
entries come back with their file, hash and tensor count but without metadata such as fit
metrics (the evaluate stage recomputes test metrics); merged files without a sidecar are left
out, so the merge stage builds them again.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import re
from pathlib import Path
from typing import Any, Iterator

from pactmerge.errors import CheckpointError
from pactmerge.fileio import read_safetensors_layout, sha256_file, write_json_atomic

# the state of a merged entry whose weights file was removed once it was evaluated (merge.keep_weights:
# false); its record stays, and pipeline.merge_stage.rebuild_merged makes the weights again
NOT_KEPT = "not kept"
MANIFEST = "manifest.json"
IDENTITY = "identity.json"
SIDECAR_SUFFIX = ".meta.json"
ASIDE_DIR = "corrupt"  # where drop_corrupt moves damaged files: <root>/corrupt/<time>/<file>
MANIFEST_LOCK = ".manifest.lock"
NAME_RE = re.compile(r"^(pretrained|joint|sequential|finetuned/[A-Za-z0-9_\-]+|merged/[A-Za-z0-9_.+=,\-]+"
                     r"|heads/[A-Za-z0-9_\-]+)$")
_NOT_STORE_DIRS = ("lightning", ASIDE_DIR, "plots")


class ManifestError(CheckpointError):
    """``manifest.json`` is missing from a store that holds checkpoints, or is not a valid manifest."""


def reindex_command(root: str | Path) -> str:
    return f"pactmerge status --reindex {root}"


def kind_of(name: str) -> str:
    return name.split("/", 1)[0]


def sidecar_path(root: str | Path, name: str) -> Path:
    return Path(root) / f"{name}{SIDECAR_SUFFIX}"


@contextlib.contextmanager
def manifest_lock(root: str | Path) -> Iterator[None]:
    """The ``fcntl`` lock under which the manifest is read-modify-written (by every process of a job array)."""
    with open(Path(root) / MANIFEST_LOCK, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of ``root``, checked for shape; ``ManifestError`` naming the file and the recovery command."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest in this run directory. If it holds checkpoints, rebuild the "
                            f"manifest from them: `{reindex_command(root)}`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest (not valid JSON: {exc}); rebuild it from the "
                            f"checkpoint files and their sidecars: `{reindex_command(root)}`") from exc
    problem = manifest_problem(manifest)
    if problem:
        raise ManifestError(f"{path}: invalid manifest ({problem}); rebuild it from the checkpoint files and "
                            f"their sidecars: `{reindex_command(root)}`")
    return manifest


def manifest_problem(manifest: Any) -> str | None:
    """Why ``manifest`` is not a valid manifest, or None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    entries = manifest.get("entries")
    if not isinstance(entries, dict):
        return "no 'entries' object"
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not isinstance(
                entry.get("sha256"), str):
            return f"entry {name!r} lacks 'file' or 'sha256'"
    return None


def check_entry(root: str | Path, name: str, entry: dict[str, Any], *, verify: bool = True) -> str:
    """``"ok"``, ``"missing"``, ``"corrupt"`` (sha256 differs from the record), ``"unchecked"`` (``verify``
    off) or ``"not kept"`` (a merge whose weights were removed after its evaluation: ``WEIGHTS_NOT_KEPT``)."""
    path = Path(root) / entry["file"]
    if not path.is_file():
        return NOT_KEPT if entry.get("weights") == NOT_KEPT else "missing"
    if not verify:
        return "unchecked"
    return "ok" if sha256_file(path) == entry["sha256"] else "corrupt"


def _store_paths(root: Path, suffix: str) -> dict[str, Path]:
    """Entry name -> file ``<name><suffix>`` under ``root``, outside the run's other folders and hidden ones."""
    out = {}
    for path in sorted(root.rglob(f"*{suffix}")):
        rel = path.relative_to(root)
        if rel.parts[0] in _NOT_STORE_DIRS or any(p.startswith(".") for p in rel.parts):
            continue
        name = rel.as_posix()[: -len(suffix)]
        if NAME_RE.match(name):
            out[name] = path
    return out


def store_files(root: str | Path) -> dict[str, Path]:
    """Entry name -> ``.safetensors`` file of every stored checkpoint file under ``root``."""
    return _store_paths(Path(root), ".safetensors")


def not_kept_sidecars(root: str | Path) -> dict[str, dict[str, Any]]:
    """Entry name -> sidecar of every entry under ``root`` recorded as ``weights: "not kept"``."""
    out = {}
    for name, path in _store_paths(Path(root), SIDECAR_SUFFIX).items():
        sidecar = _read_json(path)
        if (isinstance(sidecar, dict) and sidecar.get("weights") == NOT_KEPT and sidecar.get("name") == name
                and isinstance(sidecar.get("sha256"), str)):
            out[name] = sidecar
    return out


def _utc(ts: float | None = None) -> str:
    when = _dt.datetime.now(_dt.timezone.utc) if ts is None else _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    return when.isoformat(timespec="seconds")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def reindex(root: str | Path) -> dict[str, Any]:
    """Rebuild ``root/manifest.json`` from the checkpoint files and their sidecars (see the module docstring).

    A valid manifest is refused (rebuilding could only lose metadata); an invalid one is kept
    as ``manifest.json.invalid-<time>``. A file
    whose sidecar records another sha256, or that is truncated, is left out (and named).
    Returns ``{"from_sidecar": [...], "partial": [...], "left_out": {name: why}, "identity": bool,
    "old_manifest": path or None}``.
    """
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such run directory")
    current = _read_json(root / MANIFEST) if (root / MANIFEST).is_file() else None
    if current is not None and manifest_problem(current) is None:
        raise CheckpointError(f"{root / MANIFEST}: valid ({len(current['entries'])} entries), so there is nothing to "
                              "rebuild; --reindex only replaces a missing or invalid manifest")
    report: dict[str, Any] = {"from_sidecar": [], "partial": [], "left_out": {}, "identity": False,
                              "old_manifest": None}
    entries: dict[str, Any] = {}
    for name, path in store_files(root).items():
        digest = sha256_file(path)
        sidecar = _read_json(sidecar_path(root, name))
        if isinstance(sidecar, dict) and isinstance(sidecar.get("sha256"), str):
            if sidecar["sha256"] != digest:
                report["left_out"][name] = (f"{path.name} does not match the sha256 its sidecar recorded (changed or "
                                            "damaged after it was written); the next run makes it again")
                continue
            entry = {k: v for k, v in sidecar.items() if k != "name"}
            entry["file"] = path.relative_to(root).as_posix()
            entries[name] = entry
            report["from_sidecar"].append(name)
            continue
        if kind_of(name) == "merged":
            report["left_out"][name] = ("no sidecar (merged entries need their recorded α and metrics); "
                                        "rebuilt by the next run")
            continue
        try:
            tensors = len(read_safetensors_layout(path))
        except CheckpointError as exc:
            report["left_out"][name] = str(exc)
            continue
        entry = {"file": path.relative_to(root).as_posix(), "sha256": digest, "kind": kind_of(name),
                 "tensors": tensors, "created": _utc(path.stat().st_mtime),
                 "reindexed": "partial: no sidecar; metadata such as fit metrics and the recipe are not known"}
        if kind_of(name) in ("finetuned", "heads"):
            entry["task"] = name.split("/", 1)[1]
        entries[name] = entry
        report["partial"].append(name)
    for name, sidecar in not_kept_sidecars(root).items():
        if name not in entries and name not in report["left_out"]:  # a merge evaluated, its weights removed
            entries[name] = {k: v for k, v in sidecar.items() if k != "name"}
            report["from_sidecar"].append(name)
    identity = _read_json(root / IDENTITY)
    report["identity"] = isinstance(identity, dict)
    with manifest_lock(root):
        old = root / MANIFEST
        if old.is_file() and manifest_problem(_read_json(old)) is not None:
            aside = old.with_name(f"{MANIFEST}.invalid-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
            old.rename(aside)
            report["old_manifest"] = str(aside)
        write_json_atomic(old, {"format": 1, "identity": identity if report["identity"] else None,
                                "entries": dict(sorted(entries.items()))})
    return report


def drop_corrupt(root: str | Path) -> list[dict[str, str]]:
    """Remove the missing or corrupt entries of ``root``'s manifest, moving their files (and sidecars) aside.

    Returns one ``{"name", "why", "moved_to"}`` per dropped entry; the next ``pactmerge run``
    makes exactly those again.
    """
    import os

    root = Path(root)
    dropped = []
    aside = root / ASIDE_DIR / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    with manifest_lock(root):
        manifest = read_manifest(root)
        for name, entry in list(manifest["entries"].items()):
            state = check_entry(root, name, entry)
            if state in ("ok", NOT_KEPT):
                continue
            moved = ""
            for path in (root / entry["file"], sidecar_path(root, name)):
                if path.is_file():
                    target = aside / path.relative_to(root)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, target)
                    moved = moved or str(target)
            del manifest["entries"][name]
            dropped.append({"name": name, "why": state, "moved_to": moved})
        if dropped:
            write_json_atomic(root / MANIFEST, manifest)
    return dropped
