"""Open a source into raw splits: labels up front, images decoded one at a time on demand.

Corrupt images stop the run and name the image (file path, or dataset split and row): a silently
skipped image would change split sizes and cache contents between runs, so pactmerge refuses it.
"""

from __future__ import annotations

import gzip
import io
import logging
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from pactmerge.errors import DataError
from pactmerge.datamodules.labels import class_label_order, describe_order, lookup, name_index, norm
from pactmerge.datamodules.hub import load_splits, offline
from pactmerge.datamodules.sources import SourceSpec, split_of_path

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class RawSplit:
    """One split of a source: ``labels`` (N,) int64 and ``load(i) -> PIL.Image`` (mode L or RGB)."""

    name: str
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> Image.Image:
        raise NotImplementedError

    def ident(self, i: int) -> str:
        return f"{self.name}[{i}]"

    def _open_bytes(self, data: bytes, i: int) -> Image.Image:
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as exc:
            raise DataError(f"corrupt image {self.ident(i)}: {exc}; remove or replace it") from exc
        return img


class ArraySplit(RawSplit):
    """Images held as a uint8 array (N, H, W) or (N, H, W, 3)."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray):
        self.name, self.images, self.labels = name, images, np.asarray(labels, dtype=np.int64)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])


class FileSplit(RawSplit):
    """Images stored as files (an ImageFolder tree)."""

    def __init__(self, name: str, paths: Sequence[str], labels: np.ndarray):
        self.name, self.paths, self.labels = name, list(paths), np.asarray(labels, dtype=np.int64)

    def ident(self, i: int) -> str:
        return self.paths[i]

    def load(self, i: int) -> Image.Image:
        try:
            img = Image.open(self.paths[i])
            img.load()
        except Exception as exc:
            raise DataError(f"corrupt image {self.paths[i]}: {exc}; remove or replace the file") from exc
        return img


class HFSplit(RawSplit):
    """A ``datasets.Dataset`` whose image column is read undecoded and decoded here (to name bad rows)."""

    def __init__(self, name: str, ds, image_column: str, labels: np.ndarray):
        import datasets

        self.name, self.labels, self.column = name, labels, image_column
        self.ds = ds.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))

    def load(self, i: int) -> Image.Image:
        cell = self.ds[int(i)][self.column]
        data = cell.get("bytes")
        if data is None and cell.get("path"):
            try:
                data = Path(cell["path"]).read_bytes()
            except OSError as exc:
                raise DataError(f"image {self.ident(i)}: cannot read {cell['path']}: {exc}") from exc
        if data is None:
            raise DataError(f"image {self.ident(i)} is empty (no bytes, no path)")
        return self._open_bytes(data, i)


# ----------------------------------------------------------------------------------------------------- IDX
@lru_cache(maxsize=8)
def read_idx(path: str) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): images (N, H, W) uint8 or labels (N,) uint8."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim)]
        arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except Exception as exc:
        raise DataError(f"{path}: not a readable IDX file ({exc}); the file may be truncated") from exc


def idx_splits(root: Path, prefix: str) -> dict[str, RawSplit]:
    """``train``/``test`` splits from ``{train,t10k,test}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``root``."""
    out: dict[str, RawSplit] = {}
    for split, stems in (("train", ("train",)), ("test", ("t10k", "test"))):
        for stem in stems:
            found = [root / f"{stem}-{kind}-ubyte{gz}" for kind in ("images-idx3", "labels-idx1") for gz in ("", ".gz")]
            imgs = [p for p in found[:2] if p.is_file()]
            labs = [p for p in found[2:] if p.is_file()]
            if imgs and labs:
                out[split] = ArraySplit(f"{prefix}/{split}", read_idx(str(imgs[0])), read_idx(str(labs[0])))
                break
    return out


# -------------------------------------------------------------------------------------------- ImageFolder
def folder_class_map(folders: Sequence[str], classnames: Sequence[str], aliases: dict[str, str], where: str) -> dict[str, int]:
    """Map class folder names to label indices: class names (case/punctuation-insensitive), aliases or integers."""
    by_name = name_index(classnames, aliases)
    out: dict[str, int] = {}
    for f in folders:
        found = lookup(f, by_name, len(classnames))
        if found is not None:
            out[f] = found
        else:
            shown = ", ".join(classnames[:12]) + (", ..." if len(classnames) > 12 else "")
            raise DataError(
                f"{where}/{f}: folder name is not a class of this task (labels outside the class list). "
                f"Name class folders by class name or index 0..{len(classnames) - 1}; classes: {shown}"
            )
    return out


def imagefolder_splits(root: Path, classnames, aliases, prefix: str) -> dict[str, RawSplit]:
    out: dict[str, RawSplit] = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        split = split_of_path(Path(split_dir.name))
        if split is None:
            continue
        classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        mapping = folder_class_map(classes, classnames, aliases, str(split_dir))
        paths, labels = [], []
        for c in classes:
            files = sorted(f for f in (split_dir / c).rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
            paths += [str(f) for f in files]
            labels += [mapping[c]] * len(files)
        out[split] = FileSplit(f"{prefix}/{split}", paths, np.asarray(labels, dtype=np.int64))
    if not out:
        raise DataError(f"{root}: no train/test split folders found (expected {root}/train/<class>/<image>, {root}/test/...)")
    return out


# -------------------------------------------------------------------------------------- Hugging Face
def hf_labels(ds, column: str, classnames: Sequence[str], where: str, aliases: dict[str, str] | None = None,
              logged: set | None = None) -> np.ndarray:
    """Task labels of a ``datasets.Dataset`` column (ClassLabel, int, bool or class-name strings).

    ClassLabel names and strings are matched to ``classnames`` by name (see :mod:`labels`): a
    ClassLabel in another order is remapped, with one log line per list of names (``logged``
    holds the lists already reported); other names are refused.
    """
    import datasets

    if column not in ds.column_names:
        raise DataError(f"{where}: no label column {column!r}; columns are {ds.column_names}")
    feat = ds.features[column]
    values = ds.data.column(column).to_pylist()
    if values and isinstance(values[0], str):
        by_name = name_index(classnames, aliases)
        bad = sorted({v for v in values if norm(v) not in by_name})
        if bad:
            raise DataError(f"{where}: labels outside the class list: {bad[:10]}; classes: {list(classnames)[:12]}")
        return np.asarray([by_name[norm(v)] for v in values], dtype=np.int64)
    labels = np.asarray(values, dtype=np.int64)
    if isinstance(feat, datasets.ClassLabel):
        order = class_label_order(feat.names, classnames, aliases, f"{where}, label column {column!r}")
        if order is not None:
            bad = np.flatnonzero((labels < 0) | (labels >= len(order)))
            if len(bad):
                raise DataError(f"{where}: row {int(bad[0])} has label {int(labels[bad[0]])}, outside its ClassLabel "
                                f"(0..{len(order) - 1}); this source has unlabelled or corrupt rows")
            key = tuple(feat.names)
            if logged is None or key not in logged:
                log.info("%s: %s", where, describe_order(order, feat.names, classnames))
                if logged is not None:
                    logged.add(key)
            labels = order[labels]
    return labels


def hf_load(spec: SourceSpec, cache_dir: str | None) -> dict:
    """``{split: datasets.Dataset}`` of the splits the task uses (hub/parquet/arrow/disk sources; no
    other split is opened, see :mod:`hub`); DataError with the fix when it fails."""
    try:
        return load_splits(spec, cache_dir)
    except DataError:
        raise
    except Exception as exc:
        mode = " (offline mode is on: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE=1)" if offline() else ""
        raise DataError(
            f"cannot load {spec.describe()}{mode}: {type(exc).__name__}: {str(exc)[:300]}. "
            f"To get the data: {spec.install or 'check the path'}; or point DataConfig.source / data_dir at a "
            "local ImageFolder, parquet or arrow copy."
        ) from exc


def hf_splits(spec: SourceSpec, classnames, prefix: str, cache_dir: str | None,
              aliases: dict[str, str] | None = None) -> dict[str, RawSplit]:
    out, logged = {}, set()
    for split, ds in hf_load(spec, cache_dir).items():
        where = f"{spec.location} split {split!r}"
        if spec.image_column not in ds.column_names:
            raise DataError(f"{where}: no image column {spec.image_column!r}; columns are {ds.column_names}")
        labels = hf_labels(ds, spec.label_column, classnames, where, aliases, logged)
        out[split] = HFSplit(f"{prefix}/{split}", ds, spec.image_column, labels)
    return out
