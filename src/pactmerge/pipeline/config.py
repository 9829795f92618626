"""The run configuration: one typed tree of dataclasses, read from YAML.

The dataclasses are the components' own typed constructors (``ModelSpec``, ``DataConfig``,
``Recipe``) plus the run-level sections below, so there is one config system. Loading is
strict: an unknown key or a value of the wrong type is a ``ConfigError`` naming the dotted
key, the file and the expected type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from pactmerge.datamodules import DataConfig
from pactmerge.errors import ConfigError
from pactmerge.pipeline.finetuner import Recipe
from pactmerge.pipeline.model import ModelSpec

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "offline_default.yaml"


@dataclass
class TasksConfig:
    """Which tasks: a benchmark name ("8", "14", "20", "offline") or an explicit list of task keys."""

    benchmark: str | None = "offline"
    names: list[str] | None = None


@dataclass
class ComparisonsConfig:
    """Which models besides the merges are trained and reported."""

    zero_shot: bool = True
    individual: bool = True  # needed by every merge
    joint: bool = True
    sequential: bool = True
    sequential_order: list[str] | None = None  # default: the task order
    joint_sampling: Literal["balanced", "proportional"] = "balanced"
    # Steps of joint training; default: the recipe's max_steps times the number of tasks,
    # so joint training sees as many batches as all individual fine-tunes together.
    joint_steps: int | None = None


@dataclass
class MergeConfig:
    """Merge methods to build and how to choose their scaling coefficient α."""

    methods: list[str] = field(
        default_factory=lambda: ["weight_averaging", "task_arithmetic", "ties", "tsvm", "iso_c", "iso_cts"]
    )
    # PACT variants built for every method: "none" (the method alone), "exact", "randomized"
    pact: list[Literal["none", "exact", "randomized"]] = field(default_factory=lambda: ["none", "exact"])
    # hyper-parameters passed to every merge (unknown ones are rejected by the method), to the
    # PACT variants only (K, k, protect, rank_mode, ...), and per method (``pact+name`` for its PACT form)
    params: dict[str, Any] = field(default_factory=dict)
    pact_params: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    conv_as_matrix: bool = False
    exclude: list[str] = field(default_factory=list)
    alpha_search: Literal["coarse_to_fine", "grid", "fixed"] = "coarse_to_fine"
    alpha: float | None = None  # used when alpha_search is "fixed"; default: the method's default
    # the α values searched; default: each method's grid from the specification
    # (0.0..2.0 step 0.1; 0.05..1.0 step 0.05 for TA and TIES)
    alpha_grid: list[float] | None = None
    device: str = "auto"


@dataclass
class ClusterConfig:
    """Lightning's own distribution settings, and what ``pactmerge slurm`` writes into sbatch headers."""

    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"
    cpus_per_task: int = 8
    mem: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines run before pactmerge (module load, venv activation)


@dataclass
class RunConfig:
    output_dir: str = "runs/offline-default"
    seed: int = 0
    model: ModelSpec = field(default_factory=ModelSpec)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    data: DataConfig = field(default_factory=DataConfig)
    recipe: Recipe = field(default_factory=Recipe)
    comparisons: ComparisonsConfig = field(default_factory=ComparisonsConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def identity(self) -> dict[str, Any]:
        """The parts of the config that determine results (what makes an output directory "the same run")."""
        d = self.to_dict()
        d.pop("output_dir")
        d.pop("cluster")
        for k in ("num_workers", "eval_batch_size", "cache_dir"):
            d["data"].pop(k, None)
        d["merge"].pop("device", None)
        return d

    def identity_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (the embedded offline default when ``path`` is None).

    ``overrides`` are ``dotted.key=value`` strings (value parsed as YAML), applied after the file.
    """
    src = Path(path) if path is not None else DEFAULT_CONFIG
    if not src.is_file():
        raise ConfigError(f"{src}: no such config file")
    try:
        raw = yaml.safe_load(src.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{src}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return from_dict(RunConfig, raw, where=str(src))


def from_dict(cls: type, data: Mapping[str, Any], *, where: str = "config", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, checking every key and type."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: {prefix or 'top level'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{where}: unknown key {dotted!r}; known keys here: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(hints[key], value, where=where, key=dotted)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: section {prefix.rstrip('.') or 'top level'}: {exc}") from exc


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, *, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where=where, key=key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where}: key {key!r} expects {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: key {key!r} must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, where=where, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: key {key!r} expects a list, got {type(value).__name__} {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, where=where, key=f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: key {key!r} expects a mapping, got {type(value).__name__} {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(val_tp, v, where=where, key=f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key {key!r} expects a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: key {key!r} expects an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key {key!r} expects true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key {key!r} expects a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: key {key!r} expects {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value
