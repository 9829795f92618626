"""Open the splits a task uses, and only those, from a ``datasets`` source (hub, parquet, arrow, disk).

Hub datasets often carry splits a task never reads: seven corrupted copies of the test set on
``tanganke/gtsrb`` (and ``eurosat``, ``resisc45``, ``stanford_cars``), SVHN's 531k-image ``extra``.
``datasets.load_dataset(id)`` downloads and prepares every split, so the data files are resolved
first (``load_dataset_builder``: the card's ``configs`` or the repository's file names) and only
those of the used splits are handed to ``load_dataset``. A hub id and a local folder laid out like
the hub repository (README card + data files) take the same path.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from pactmerge.datamodules.sources import SourceSpec, split_of_path
from pactmerge.errors import DataError

_KNOWN = {"train": "train", "training": "train", "test": "test", "testing": "test", "t10k": "test",
          "val": "validation", "valid": "validation", "validation": "validation", "dev": "validation"}
log = logging.getLogger(__name__)
_SHARD = re.compile(r"([-_.]?\d{5}-of-\d{5}|[-_.]?\d+)$")


def used_splits(spec: SourceSpec) -> list[str]:
    """The source splits a task reads: train, validation (when official) and test, each once."""
    return list(dict.fromkeys(s for s in (spec.train_split, spec.val_split, spec.test_split) if s))


def file_split_name(rel: Path) -> str:
    """The split a data file belongs to, from hub-style names: ``<split>-00000-of-00003.parquet``,
    ``<split>/0000.parquet``, ``<name>-<split>.arrow``. Known spellings become train / test /
    validation; any other name (``extra``, ``contrast``) is returned as it is."""
    stem = _SHARD.sub("", rel.name.split(".")[0])
    parts = [p for p in (*rel.parts[:-1], stem) if p]
    for part in reversed(parts):
        if part.lower() in _KNOWN:
            return _KNOWN[part.lower()]
    return stem or (rel.parts[-2] if len(rel.parts) > 1 else rel.name)


def pick_split(available: list[str], split: str, where: str) -> str:
    """The available split name that serves ``split``: itself, else the one name that contains it as
    a word (``mnist-train`` for train, never both ``test`` and ``test_contrast``)."""
    if split in available:
        return split
    near = [a for a in available if split_of_path(Path(a)) == split]
    if len(near) == 1:
        return near[0]
    if near:
        raise DataError(f"{where}: several splits could be {split!r}: {sorted(near)}; rename the files so one is "
                        f"named {split!r}")
    raise DataError(f"{where}: no split {split!r}; it has {sorted(available)}. Name the split files/folders train, "
                    "test (and validation), as on the hub")


def local_data_files(root: Path, kind: str, splits: list[str]) -> dict[str, list[str]]:
    """``{split: files}`` of ``splits`` among ``root``'s ``*.<kind>`` files (others are not opened)."""
    groups: dict[str, list[str]] = {}
    for f in sorted(root.rglob(f"*.{kind}")):
        groups.setdefault(file_split_name(f.relative_to(root)), []).append(str(f))
    if not groups:
        raise DataError(f"{root}: no .{kind} files")
    return {s: groups[pick_split(list(groups), s, str(root))] for s in splits}


def load_splits(spec: SourceSpec, cache_dir: str | None) -> dict:
    """``{split: datasets.Dataset}`` for the used splits of a hub / parquet / arrow / disk source."""
    import datasets

    used = used_splits(spec)
    if spec.kind == "disk":  # DatasetDict.save_to_disk: <root>/<split>/dataset_info.json
        root = Path(spec.location)
        available = [p.name for p in root.iterdir() if (p / "dataset_info.json").is_file()]
        return {s: datasets.load_from_disk(str(root / pick_split(available, s, str(root)))) for s in used}
    if spec.kind == "hub":
        local = Path(spec.location).is_dir()  # a folder laid out like the hub repository
        cached = cached_hub_splits(spec, used) if offline() and not local else None
        if cached is not None:
            return cached
        builder = datasets.load_dataset_builder(spec.location, spec.name)
        files = builder.config.data_files
        if not files:  # datasets' own cache lookup, offline
            return {s: datasets.load_dataset(spec.location, spec.name, split=s) for s in used}
        missing = [s for s in used if s not in files]
        if missing:
            raise DataError(f"{spec.describe()}: no split {missing[0]!r}; the source has {sorted(files)}. "
                            "Check the task's split names against the dataset card")
        dd = datasets.load_dataset(spec.location, spec.name, data_files={s: files[s] for s in used})
        return {s: dd[s] for s in used}
    hf_cache = str(Path(cache_dir) / "hf") if cache_dir else None
    files = local_data_files(Path(spec.location), spec.kind, used)
    dd = datasets.load_dataset(spec.kind, data_files=files, cache_dir=hf_cache)
    return {s: dd[s] for s in used}


def offline() -> bool:
    return os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"


def cached_hub_splits(spec: SourceSpec, splits: list[str]) -> dict | None:
    """Offline: ``splits`` of a hub dataset read from the ``datasets`` cache, or None when no cached
    copy holds them all. A copy prepared with every split (``load_dataset(id)``) or with the used
    splits only (as pactmerge prepares it online) both serve; only the used splits' files are opened."""
    import datasets
    from datasets.naming import camelcase_to_snakecase

    parts = spec.location.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = Path(datasets.config.HF_DATASETS_CACHE) / "___".join(parts)
    found: list[Path] = []
    for info in root.glob("*/*/*/dataset_info.json"):
        config = info.parents[2].name
        if spec.name and config != spec.name and not config.startswith(f"{spec.name}-"):
            continue
        try:
            have = json.loads(info.read_text()).get("splits") or {}
        except (OSError, ValueError):
            continue
        if all(s in have for s in splits):
            found.append(info.parent)
    if not found:
        return None
    folder = max(found, key=lambda p: p.stat().st_mtime)
    out = {}
    for split in splits:
        files = sorted(folder.glob(f"*-{split}.arrow")) + sorted(folder.glob(f"*-{split}-[0-9]*-of-[0-9]*.arrow"))
        if not files:
            return None
        shards = [datasets.Dataset.from_file(str(f)) for f in files]
        out[split] = shards[0] if len(shards) == 1 else datasets.concatenate_datasets(shards)
    log.debug("%s: splits %s read from the datasets cache %s", spec.location, splits, folder)
    return out
