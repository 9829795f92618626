"""The restricted unpickler: inert placeholders for every class a pickle names, and only the
tensor and container reconstructors a weights file needs as real callables.

* every class the pickle names becomes an inert placeholder (a fresh class per name that
  records its constructor arguments and its ``__setstate__`` state; no module is imported);
* the only real callables are the tensor and container reconstructors a checkpoint needs
  (``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``, ``collections.OrderedDict``,
  ``builtins.set``, ``torch.Size``, dtypes, storage types, ...);
* a call to any other function (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is
  refused with an ``UnsafePickleError`` naming it, and a reference to a module that can run
  programs or code (``os``, ``subprocess``, ``builtins``, ``importlib``, ...) is refused as soon as
  the pickle names it; nothing of the file has run at that point.

Storages come from a ``storage(pid)`` callback given by ``pactmerge.interop.legacy.storage``.
"""

from __future__ import annotations

import _compat_pickle
import pickle
from collections import Counter, OrderedDict
from typing import Any, Callable

import torch

from pactmerge.errors import CheckpointError

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
class RestrictedUnpickler(pickle.Unpickler):
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
