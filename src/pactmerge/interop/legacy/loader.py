"""Reading a legacy pickle end to end, and the dispatch between state-dict files and pickled models."""

from __future__ import annotations

import io
import logging
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pactmerge.errors import CheckpointError
from pactmerge.interop.legacy.graph import CLASS_MAP, flatten, image_tower
from pactmerge.interop.legacy.storage import load_stream, load_zip
from pactmerge.interop.legacy.unpickler import LegacyObject

log = logging.getLogger("pactmerge.interop.legacy")
Tensor = torch.Tensor


@dataclass
class LegacyCheckpoint:
    """What ``read_legacy_pickle`` found: the tower state and how it was mapped."""

    state: dict[str, Tensor]  # open_clip CLIP layout: "visual.conv1.weight", ...
    prefix: str  # where the tower sat in the object graph ("model.visual.")
    root_class: str  # e.g. "src.modeling.ImageEncoder"
    classes: dict[str, int] = field(default_factory=dict)  # every global the pickle named -> count
    mapped_classes: dict[str, str] = field(default_factory=dict)  # old open_clip class -> today's

    def summary(self) -> str:
        mapped = "; ".join(f"{a} -> {b}" for a, b in self.mapped_classes.items())
        return (f"{self.root_class}: {len(self.state)} tensors of the image tower at {self.prefix!r} -> 'visual.'"
                + (f"; old open_clip classes (same parameter names): {mapped}" if mapped else ""))


def read_legacy_pickle(path: str | Path) -> LegacyCheckpoint:
    """Read the image tower of a pickled model file without executing code from it (see the package docstring).

    Raises ``UnsafePickleError`` naming the class or function when the pickle needs anything
    besides tensors, containers and inert class instances, and ``CheckpointError`` for
    unreadable files or files without exactly one CLIP image tower.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if tarfile.is_tarfile(path) and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{source}: the tar format of torch < 0.4 is not supported; load it with that torch "
                              "in an isolated environment and save model.state_dict() instead")
    try:
        obj, seen = load_zip(path, source) if zipfile.is_zipfile(path) else load_stream(path, source)
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged or unusual pickle: placeholders and rebuilders fail in many ways
        raise CheckpointError(f"{source}: cannot read this torch.save pickle ({type(exc).__name__}: {exc}); the file "
                              "may be damaged. Nothing from it was executed.") from exc
    tower, prefix = image_tower(flatten(obj), source)
    root = obj._legacy_class if isinstance(obj, LegacyObject) else type(obj).__name__
    result = LegacyCheckpoint(tower, prefix, root, dict(seen), {k: CLASS_MAP[k] for k in seen if k in CLASS_MAP})
    log.info("%s: read without running its code: %s", source, result.summary())
    return result


def looks_like_pickled_model(path: str | Path) -> list[str]:
    """Globals (not torch's or the containers') a torch file's pickle names, in order of first mention.

    Read with ``pickletools`` (nothing is unpickled); [] when there are none or the file is no pickle."""
    import pickletools

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                data = zf.read(pkl) if pkl else b""
        else:
            data = path.read_bytes()[: 1 << 24]
        names: list[str] = []
        strings: list[str] = []
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(arg)
            elif op.name == "GLOBAL":
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # not a pickle we can scan: nothing to say
        return []
    ours = ("torch.", "collections.", "builtins.", "__builtin__.", "_codecs.", "copyreg.", "copy_reg.")
    return list(dict.fromkeys(n for n in names if not n.startswith(ours)))


def read_state_file(path: str | Path, *, trust_pickle: bool = False, legacy_pickle: bool = False) -> dict[str, Tensor]:
    """The raw state dict of a weights file: ``fileio.load_state_dict``, or with ``legacy_pickle`` the
    ``visual.*`` tower of a pickled model object (a safetensors file is always read as it is).

    Without ``legacy_pickle``, a file that fails to load because it pickles whole model objects
    gets an error saying to pass ``--legacy-pickle`` (or set ``legacy_pickle: true``).
    """
    from pactmerge.fileio import load_state_dict

    path = Path(path)
    if legacy_pickle and path.suffix != ".safetensors":
        return read_legacy_pickle(path).state
    try:
        return load_state_dict(path, trust_pickle=trust_pickle)
    except CheckpointError as exc:
        classes = looks_like_pickled_model(path) if path.is_file() and path.suffix != ".safetensors" else []
        if not classes:
            raise
        raise CheckpointError(
            f"{path}: pickled objects (classes {', '.join(classes[:4])}"
            f"{', ...' if len(classes) > 4 else ''}), so weights-only loading fails. Pass --legacy-pickle (in a "
            "config: legacy_pickle: true) to read a pickled model's image tower without running code from it and "
            "without those classes; or, for a state dict beside other objects whose origin you trust, --trust-pickle."
        ) from exc


def load_encoder(path: str | Path, *, trust_pickle: bool = False, legacy_pickle: bool = False,
                 source: str | None = None) -> tuple[dict[str, Tensor], str]:
    """The image encoder of a file or checkpoint directory in pactmerge's layout, and the layout it
    came in: ``interop.files.load_encoder_file``, legacy pickles read as ``read_state_file`` does."""
    from pactmerge.interop.files import encoder_state, weights_file

    file = weights_file(path)
    state = read_state_file(file, trust_pickle=trust_pickle, legacy_pickle=legacy_pickle)
    return encoder_state(state, source=source or str(file))
