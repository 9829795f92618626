"""Read the weights of a ``torch.save(model)`` pickle without running code from it.

The most used public fine-tuned CLIP checkpoints of the model-merging literature
(task_vectors, tall_masks, AdaMerging, TSV/Iso) are pickles of whole model objects:
``src.modeling.ImageEncoder`` (``.model`` an open_clip ``CLIP`` whose ``.visual`` is an
``open_clip.model.VisualTransformer`` in old open_clip versions, ``VisionTransformer`` in newer
ones), sometimes with the training transforms as attributes. ``torch.load`` needs those projects'
code on the path, and unpickling them may run any code the file names.

``read_legacy_pickle`` reads such a file with a restricted unpickler instead:

* every class the pickle names becomes an inert placeholder (a fresh class per name that
  records its constructor arguments and its ``__setstate__`` state; no module is imported);
* the only real callables are the tensor and container reconstructors a checkpoint needs
  (``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``, ``collections.OrderedDict``,
  ``builtins.set``, ``torch.Size``, dtypes, storage types, ...);
* a call to any other function (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is
  refused with a ``CheckpointError`` naming it, and a reference to a module that can run
  programs or code (``os``, ``subprocess``, ``builtins``, ``importlib``, ...) is refused as soon as
  the pickle names it; nothing of the file has run at that point;
* tensors come from the archive's storages (the zip format of torch >= 1.6: ``data.pkl`` +
  ``data/<key>``, and the older single-stream format); the module tree is walked through the
  placeholders' ``_parameters`` / ``_buffers`` / ``_modules`` dictionaries (non-persistent
  buffers left out, as ``state_dict()`` does).

The image tower found in the graph is returned as an open_clip CLIP state dict (``visual.*``).
Old open_clip ``VisualTransformer`` towers have today's ``VisionTransformer`` parameter names
(``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
``transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``,
``ln_post``, ``proj``), so only the wrapper prefix (``model.visual.`` of ``ImageEncoder``,
``image_encoder.model.visual.`` of ``ImageClassifier``, ``module.`` of DataParallel) is
mapped; ``_KEY_RENAMES`` holds per-key renames should a version differ.
"""

from __future__ import annotations

import _compat_pickle
import io
import logging
import pickle
import re
import tarfile
import zipfile
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from pactmerge.errors import CheckpointError

log = logging.getLogger(__name__)
Tensor = torch.Tensor

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# modules whose mere mention in a checkpoint means it can run programs or code
_DENIED_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "shutil", "socket", "importlib", "runpy",
    "pickle", "_pickle", "cPickle", "marshal", "types", "code", "codeop", "ctypes", "pty", "webbrowser",
    "multiprocessing", "threading", "_thread", "signal", "io", "_io", "pathlib", "tempfile", "operator", "_operator",
    "functools", "inspect", "pdb", "timeit", "asyncio", "platform", "glob", "zipimport", "pkgutil", "site",
})
# functions whose result a checkpoint may hold but the weights never need: recorded, not called
_INERT_CALLABLES = frozenset({
    "functools.partial", "numpy.dtype", "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.ndarray",
})
# open_clip class names of old versions and today's equivalents (for the log; parameter names are the same)
CLASS_MAP = {
    "open_clip.model.VisualTransformer": "open_clip.transformer.VisionTransformer",
    "open_clip.model.VisionTransformer": "open_clip.transformer.VisionTransformer",
    "open_clip.model.Transformer": "open_clip.transformer.Transformer",
    "open_clip.model.ResidualAttentionBlock": "open_clip.transformer.ResidualAttentionBlock",
    "open_clip.model.LayerNorm": "open_clip.transformer.LayerNorm",
    "open_clip.model.QuickGELU": "open_clip.transformer.QuickGELU",
    "clip.model.VisualTransformer": "open_clip.transformer.VisionTransformer",
    "clip.model.VisionTransformer": "open_clip.transformer.VisionTransformer",
}
# (old key pattern, today's key) inside the tower, applied in order; empty while the names agree
_KEY_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = ()


class UnsafePickleError(CheckpointError):
    """The pickle names or calls something a weights file does not need; nothing of it was run."""


# -- placeholders ---------------------------------------------------------------------------
class LegacyObject:
    """Inert stand-in for an instance of a class of the pickling program.

    ``_legacy_class`` is the dotted class name; ``_legacy_args`` the constructor arguments (when
    the pickle called the class), ``_legacy_state`` what ``__setstate__`` received (a module's
    ``__dict__``), ``_legacy_items`` / ``_legacy_list`` what SETITEMS / APPENDS added.
    """

    _legacy_class = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "LegacyObject":
        obj = object.__new__(cls)
        obj.__dict__.update(_legacy_args=args, _legacy_kwargs=kwargs, _legacy_state=None,
                            _legacy_items={}, _legacy_list=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_legacy_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self._legacy_items[key] = value

    def append(self, value: Any) -> None:
        self._legacy_list.append(value)

    def extend(self, values: Any) -> None:
        self._legacy_list.extend(values)

    @property
    def attributes(self) -> dict[str, Any]:
        """The recorded instance dictionary (``state`` or the first part of ``(state, slots)``)."""
        state = self._legacy_state
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        return state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<placeholder {self._legacy_class}>"


class LegacyFunction:
    """Inert stand-in for a function the pickle names; calling it is refused."""

    def __init__(self, qualname: str, source: str) -> None:
        self.qualname, self.source = qualname, source

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(
            f"{self.source}: refused: the pickle calls {self.qualname}, which is not a tensor or container "
            "constructor a weights file needs (loading the file with torch.load could run it). Nothing from "
            "the file was executed. Ask its authors for a state dict (safetensors or torch.save(model.state_dict()))."
        )

    def __repr__(self) -> str:
        return f"<placeholder function {self.qualname}>"


def _refuse_module(qualname: str, source: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"{source}: refused: the pickle names {qualname}, from a module that can run programs or code; a weights "
        "file never needs it, so the file may be malicious. Nothing from the file was executed."
    )


# -- allowed real callables -----------------------------------------------------------------
def _check_hooks(hooks: Any, source: str) -> OrderedDict:
    if hooks:
        raise UnsafePickleError(f"{source}: refused: a tensor carries pickled backward hooks ({hooks!r})")
    return OrderedDict()


def _allowed(source: str) -> dict[str, Any]:
    u = torch._utils

    def rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
        return u._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, _check_hooks(hooks, source), metadata)

    def rebuild_tensor(storage, offset, size, stride):
        return u._rebuild_tensor(storage, offset, size, stride)

    def rebuild_parameter(data, requires_grad, hooks):
        return u._rebuild_parameter(data, requires_grad, _check_hooks(hooks, source))

    def rebuild_parameter_with_state(data, requires_grad, hooks, state):
        return u._rebuild_parameter(data, requires_grad, _check_hooks(hooks, source))  # state: Python attributes

    tensor_rebuilders = {rebuild_tensor_v2, rebuild_tensor, rebuild_parameter, rebuild_parameter_with_state}

    def rebuild_from_type_v2(func, new_type, args, state):
        if func not in tensor_rebuilders or new_type not in (torch.Tensor, torch.nn.Parameter):
            raise UnsafePickleError(f"{source}: refused: a tensor of type {new_type!r} rebuilt by {func!r}")
        return func(*args)

    def reconstructor(cls, base, state):
        if base is not object or not (isinstance(cls, type) and issubclass(cls, LegacyObject)):
            raise UnsafePickleError(f"{source}: refused: copyreg._reconstructor of {cls!r} from {base!r}")
        return cls.__new__(cls)

    rc: dict[str, Any] = {
        "torch._utils._rebuild_tensor_v2": rebuild_tensor_v2,
        "torch._utils._rebuild_tensor": rebuild_tensor,
        "torch._utils._rebuild_parameter": rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": rebuild_parameter_with_state,
        "torch._tensor._rebuild_from_type_v2": rebuild_from_type_v2,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "torch.Tensor": torch.Tensor,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "collections.OrderedDict": OrderedDict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.complex": complex,
        "builtins.bytearray": bytearray,
        "builtins.slice": slice,
        "_codecs.encode": _latin1_encode,
        "copyreg._reconstructor": reconstructor,
    }
    for dtype in {v for v in vars(torch).values() if isinstance(v, torch.dtype)}:
        rc[str(dtype)] = dtype
    return rc


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``; only that use is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not a bytes literal")
    return text.encode("latin1")


# -- the unpickler --------------------------------------------------------------------------
class _RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` gives placeholders (or the allowed reconstructors); ``persistent_load`` storages."""

    def __init__(self, file: Any, *, source: str, storage: Callable[[tuple], Any] | None) -> None:
        super().__init__(file, encoding="utf-8")
        self.source = source
        self._storage = storage
        self._allow = _allowed(source)
        self._classes: dict[str, type] = {}
        self.seen: Counter[str] = Counter()

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names in protocol < 3 pickles (__builtin__, copy_reg, ...), as pickle maps them
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualname = f"{module}.{name}"
        self.seen[qualname] += 1
        if qualname in self._allow:
            return self._allow[qualname]
        if module == "torch" and name.endswith("Storage"):
            if name == "UntypedStorage":
                return torch.UntypedStorage
            return torch.serialization.StorageType(name)
        if module.split(".")[0] in _DENIED_MODULES and qualname not in _INERT_CALLABLES:
            raise _refuse_module(qualname, self.source)
        leaf = name.rsplit(".", 1)[-1]
        if qualname in _INERT_CALLABLES or leaf[:1].isupper():
            if qualname not in self._classes:
                self._classes[qualname] = type(leaf, (LegacyObject,), {"_legacy_class": qualname,
                                                                         "__module__": "pactmerge.legacy"})
            return self._classes[qualname]
        return LegacyFunction(qualname, self.source)

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"{self.source}: unexpected persistent id {pid!r} in the pickle")
        kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) >= 2:  # old torch recorded the module class and its source
            return pid[1]
        if kind != "storage" or self._storage is None:
            raise CheckpointError(f"{self.source}: unexpected persistent id {pid[:1]!r} in the pickle")
        return self._storage(pid)


def _dtype_of(storage_type: Any, source: str) -> torch.dtype:
    if storage_type is torch.UntypedStorage:
        return torch.uint8
    dtype = getattr(storage_type, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"{source}: unknown storage type {storage_type!r} in the pickle")
    return dtype


def _typed(data: torch.UntypedStorage, dtype: torch.dtype) -> Any:
    return torch.storage.TypedStorage(wrap_storage=data, dtype=dtype, _internal=True)


def _bytes_storage(raw: bytes | bytearray) -> torch.UntypedStorage:
    if not raw:
        return torch.UntypedStorage(0)
    return torch.frombuffer(raw if isinstance(raw, bytearray) else bytearray(raw), dtype=torch.uint8).untyped_storage()


def _load_zip(path: Path, source: str) -> tuple[Any, Counter]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise CheckpointError(f"{source}: a zip file without a torch data.pkl; not a torch.save archive")
        prefix = pkl[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").decode().strip() != "little":
            raise CheckpointError(f"{source}: saved on a big-endian machine; convert it there to safetensors first")
        cache: dict[str, Any] = {}

        def storage(pid: tuple) -> Any:
            _, storage_type, key, _location, numel = pid[:5]
            dtype = _dtype_of(storage_type, source)
            if key not in cache:
                try:
                    info = zf.getinfo(f"{prefix}data/{key}")
                except KeyError:
                    raise CheckpointError(f"{source}: storage {key!r} is missing from the archive; the file is "
                                          "truncated or damaged") from None
                raw = bytearray(info.file_size)  # read in place: one copy of the weights in memory
                view, got = memoryview(raw), 0
                with zf.open(info) as member:
                    while got < len(raw) and (n := member.readinto(view[got:])):
                        got += n
                need = numel * torch._utils._element_size(dtype)
                if got != need or len(raw) != need:
                    raise CheckpointError(f"{source}: storage {key!r} holds {len(raw)} bytes, {need} expected; "
                                          "the file is truncated or damaged")
                cache[key] = _bytes_storage(raw)
            return _typed(cache[key], dtype)

        unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), source=source, storage=storage)
        return unpickler.load(), unpickler.seen


def _load_stream(path: Path, source: str) -> tuple[Any, Counter]:
    """The single-stream format of torch < 1.6: magic, protocol, sys info, object, storage keys, raw storages."""
    with open(path, "rb") as fh:
        def plain() -> Any:
            return _RestrictedUnpickler(fh, source=source, storage=None).load()

        try:
            magic = plain()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise CheckpointError(f"{source}: neither a torch zip archive nor a torch pickle ({exc})") from exc
        if magic != _LEGACY_MAGIC:
            raise CheckpointError(f"{source}: a pickle, but not one written by torch.save (no torch magic number)")
        protocol, sys_info = plain(), plain()
        if protocol != 1001 or not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
            raise CheckpointError(f"{source}: unsupported torch.save stream (protocol {protocol!r}, {sys_info!r})")
        storages: dict[str, tuple[torch.UntypedStorage, torch.dtype]] = {}

        def storage(pid: tuple) -> Any:
            _, storage_type, key, _location, numel, view = pid[:6]
            dtype = _dtype_of(storage_type, source)
            if key not in storages:
                storages[key] = (torch.UntypedStorage(numel * torch._utils._element_size(dtype)), dtype)
            if view is not None:
                raise CheckpointError(f"{source}: storage views of torch < 0.4 are not supported; re-save the file")
            return _typed(storages[key][0], dtype)

        unpickler = _RestrictedUnpickler(fh, source=source, storage=storage)
        obj = unpickler.load()
        keys = plain()
        for key in keys:
            data, dtype = storages[key]
            head = fh.read(8)
            size = torch._utils._element_size(dtype)
            numel = int.from_bytes(head, "little") if len(head) == 8 else -1
            raw = fh.read(max(numel, 0) * size)
            if numel * size != data.nbytes() or len(raw) != data.nbytes():
                raise CheckpointError(f"{source}: storage {key!r} is truncated or damaged")
            data.copy_(_bytes_storage(raw))
        return obj, unpickler.seen


# -- object graph -> state dict -------------------------------------------------------------
def _walk(obj: Any, prefix: str, out: dict[str, Tensor], seen: set[int]) -> None:
    if isinstance(obj, Tensor):
        out.setdefault(prefix.rstrip("."), obj.detach())
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, LegacyObject):
        attrs = obj.attributes
        if "_parameters" in attrs or "_modules" in attrs:  # a torch.nn.Module
            skip = attrs.get("_non_persistent_buffers_set") or set()
            for n, v in (attrs.get("_parameters") or {}).items():
                if isinstance(v, Tensor):
                    out[prefix + n] = v.detach()
            for n, v in (attrs.get("_buffers") or {}).items():
                if isinstance(v, Tensor) and n not in skip:
                    out[prefix + n] = v.detach()
            for n, v in (attrs.get("_modules") or {}).items():
                if v is not None:
                    _walk(v, f"{prefix}{n}.", out, seen)
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(k, str):
                _walk(v, f"{prefix}{k}.", out, seen)


def _tower(flat: dict[str, Tensor], source: str) -> tuple[dict[str, Tensor], str]:
    """The ``visual.*`` state of the one image tower in ``flat``, and where it was (``model.visual.``)."""
    prefixes = sorted({m.group(1) for k in flat if (m := re.match(r"^((?:.*?\.)?visual\.)", k))}, key=len)
    prefixes = [p for p in prefixes if not any(p != q and p.startswith(q) for q in prefixes)]
    if not prefixes:  # a bare tower: conv1 + transformer.resblocks
        prefixes = sorted({k[: -len("conv1.weight")] for k in flat if k.endswith("conv1.weight")
                           and f"{k[: -len('conv1.weight')]}transformer.resblocks.0.ln_1.weight" in flat}, key=len)
    if len(prefixes) != 1:
        what = f"several image towers ({', '.join(p or '<root>' for p in prefixes)})" if prefixes else "no image tower"
        raise CheckpointError(f"{source}: {what} among the {len(flat)} tensors of the pickled object (first keys: "
                              f"{', '.join(list(flat)[:4]) or 'none'}); expected one open_clip CLIP model ('visual.*')")
    prefix = prefixes[0]
    tower = {}
    for key, value in flat.items():
        if key.startswith(prefix):
            rest = key[len(prefix):]
            for pattern, new in _KEY_RENAMES:
                rest = pattern.sub(new, rest)
            tower[f"visual.{rest}"] = value
    return tower, prefix


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
    """Read the image tower of a pickled model file without executing code from it (see the module docstring).

    Raises ``UnsafePickleError`` naming the class or function when the pickle needs anything
    besides tensors, containers and inert class instances, and ``CheckpointError`` for
    unreadable files or files without exactly one open_clip image tower.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if tarfile.is_tarfile(path) and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{source}: the tar format of torch < 0.4 is not supported; load it with that torch "
                              "in an isolated environment and save model.state_dict() instead")
    try:
        obj, seen = _load_zip(path, source) if zipfile.is_zipfile(path) else _load_stream(path, source)
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged or unusual pickle: placeholders and rebuilders fail in many ways
        raise CheckpointError(f"{source}: cannot read this torch.save pickle ({type(exc).__name__}: {exc}); the file "
                              "may be damaged. Nothing from it was executed.") from exc
    flat: dict[str, Tensor] = {}
    _walk(obj, "", flat, set())
    tower, prefix = _tower({k.replace("module.", "", 1) if k.startswith("module.") else k: v
                            for k, v in flat.items()}, source)
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
    ours = ("torch.", "collections.", "builtins.", "_codecs.", "copyreg.")
    return list(dict.fromkeys(n for n in names if not n.startswith(ours)))


def load_encoder(path: str | Path, *, trust_pickle: bool = False, legacy_pickle: bool = False,
                 source: str | None = None) -> tuple[dict[str, Tensor], str]:
    """``interop.files.load_encoder_file``, or with ``legacy_pickle`` the tower of a pickled model file.

    Without ``legacy_pickle``, a file that fails to load because it pickles whole model objects
    gets an error saying to pass ``--legacy-pickle``.
    """
    from pactmerge.interop.files import encoder_state, load_encoder_file, weights_file

    if legacy_pickle:
        file = weights_file(path)
        if file.suffix == ".safetensors":
            return load_encoder_file(path, trust_pickle=trust_pickle)
        return encoder_state(read_legacy_pickle(file).state, source=source or str(file))
    try:
        return load_encoder_file(path, trust_pickle=trust_pickle)
    except CheckpointError as exc:
        file = weights_file(path)
        classes = looks_like_pickled_model(file) if file.is_file() and file.suffix != ".safetensors" else []
        if not classes:
            raise
        raise CheckpointError(
            f"{file}: a pickled model object (classes {', '.join(classes[:4])}"
            f"{', ...' if len(classes) > 4 else ''}), not a state dict, so weights-only loading fails. Pass "
            "--legacy-pickle to read its weights without running code from it and without those classes."
        ) from exc
