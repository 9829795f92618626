"""Where a task's images come from: a source spec, and parsing of user overrides.

A source is one of

- ``hub``: a Hugging Face ``datasets`` id (``owner/name``, optional config), loaded with
  ``datasets.load_dataset``; works offline from a pre-filled cache with ``HF_DATASETS_OFFLINE=1``;
- ``parquet`` / ``arrow``: local files loaded with the ``datasets`` parquet/arrow loaders; the split of
  each file comes from its name or folder (``train-0000.parquet``, ``test/...``, ``validation-...``);
- ``disk``: a directory written by ``DatasetDict.save_to_disk`` (it holds ``dataset_dict.json``);
- ``imagefolder``: ``<root>/<split>/<class>/<image>`` with split folders ``train``, ``test`` and
  optionally ``val``/``valid``/``validation``; class folders are class names (or aliases) or indices;
- ``idx``: a directory of MNIST-format IDX files (``train-images-idx3-ubyte[.gz]`` ...);
- ``offline``: a loader built into pactmerge for data installed from a package registry.

User overrides are strings: ``hf:owner/name[:config]``, ``owner/name``, ``offline:<name>``, a
local directory path, or ``hf:/local/dir[:config]`` for a local folder laid out like a hub dataset
repository (card and data files), read exactly as the hub id would be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from pactmerge.errors import DataError

KINDS = ("hub", "parquet", "arrow", "disk", "imagefolder", "idx", "offline")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")


@dataclass(frozen=True)
class SourceSpec:
    """One data source of a task.

    ``val_split`` names an official validation split; when it is None the validation set is carved
    out of ``train_split`` (see :mod:`pactmerge.datamodules.splits`). ``install`` says which
    package, command or download provides the data when it is missing.
    """

    kind: str
    location: str
    name: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    val_split: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    install: str = ""

    def describe(self) -> str:
        where = f"{self.location}" + (f" (config {self.name})" if self.name else "")
        splits = f"train={self.train_split}, test={self.test_split}"
        if self.val_split:
            splits += f", val={self.val_split}"
        return f"{self.kind}:{where} [{splits}]"


def hub(location: str, install: str = "", **kw) -> SourceSpec:
    hint = install or (
        f"on a machine with network run `python -c \"import datasets; datasets.load_dataset('{location}'"
        + (f", '{kw['name']}'" if kw.get("name") else "")
        + ")\"` to fill the Hugging Face cache (HF_HOME), then copy the cache here and set HF_DATASETS_OFFLINE=1"
    )
    return SourceSpec("hub", location, install=hint, **kw)


def parse_source(text: str, default: SourceSpec | None = None) -> SourceSpec:
    """Turn a user override string into a SourceSpec.

    Local copies (parquet/arrow/disk) keep the split and column names of ``default`` (a local copy
    of the task's hub data reads the same way); other kinds use ``train``/``test``/``image``/``label``.
    """
    text = str(text).strip()
    if text.startswith("offline:"):
        return SourceSpec("offline", text.split(":", 1)[1])
    if text.startswith("hf:"):
        loc, _, name = text[3:].partition(":")
        return _hub_override(loc, name or None, default)
    path = Path(text).expanduser()
    if path.is_dir():
        kind = detect_local_kind(path)
        spec = SourceSpec(kind, str(path))
        if default is not None and kind in ("parquet", "arrow", "disk"):
            spec = replace(
                default, kind=kind, location=str(path), name=None,
                train_split=canonical_split(default.train_split),
                test_split=canonical_split(default.test_split),
                val_split=canonical_split(default.val_split) if default.val_split else None,
                install=f"the local directory {path} (given as the data source)",
            )
        return spec
    if _HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        loc, _, name = text.partition(":")
        return _hub_override(loc, name or None, default)
    raise DataError(
        f"data source {text!r}: no such directory, and not a Hugging Face dataset id (owner/name) "
        "nor offline:<name>. Give an existing ImageFolder/parquet/arrow/IDX directory or a hub id."
    )


def _hub_override(loc: str, name: str | None, default: SourceSpec | None) -> SourceSpec:
    """A hub source given by the user. The task's own hub dataset, or a local folder laid out like a
    hub repository (``hf:/path``: its card and data files, loaded by ``load_dataset`` like the hub
    id), keeps the split and column names of the task's hub source; another id uses the defaults."""
    path = Path(loc).expanduser()
    if default is not None and default.kind == "hub" and (loc == default.location or path.is_dir()):
        where = str(path) if path.is_dir() else loc
        return replace(default, location=where, name=name or default.name,
                       install=default.install if where == default.location else f"the local hub copy {where}")
    return hub(loc, name=name)


def detect_local_kind(path: Path) -> str:
    """Classify a local data directory (see the module docstring)."""
    if (path / "dataset_dict.json").is_file():
        return "disk"
    if any(path.rglob("*.parquet")):
        return "parquet"
    if any(path.rglob("*.arrow")):
        return "arrow"
    if any(path.glob("*-images-idx3-ubyte*")):
        return "idx"
    return "imagefolder"


def split_of_path(rel: Path) -> str | None:
    """The split a local file belongs to, from its folder or file name (None when it names none)."""
    tokens: list[str] = []
    for part in rel.parts:
        tokens.extend(t for t in re.split(r"[-_.\s]", part.lower()) if t)
    for tok in tokens:
        if tok in ("train", "training"):
            return "train"
        if tok in ("test", "testing", "t10k"):
            return "test"
        if tok in ("val", "valid", "validation", "dev"):
            return "validation"
    return None


def canonical_split(name: str) -> str:
    """``train``/``test``/``validation`` for the usual spellings of a split name (else the name itself)."""
    return split_of_path(Path(name)) or name
