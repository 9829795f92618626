"""The run configuration: one typed tree of dataclasses, read from YAML.

The dataclasses are the components' own typed constructors (``ModelSpec``, ``DataConfig``,
``Recipe``) plus the run-level sections below, so there is one config system. Loading is
strict: an unknown key or a value of the wrong type is a ``ConfigError`` naming the dotted
key, the file and the expected type (``pipeline.config_read`` reads files, ``--set`` overrides
and the typed sections); ``validate`` then checks every value for meaning.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from pactmerge.datamodules import DataConfig
from pactmerge.errors import ConfigError
from pactmerge.pipeline.config_read import apply_overrides, from_dict, read_yaml_file, to_plain
from pactmerge.pipeline.model_spec import ModelSpec
from pactmerge.pipeline.pool import PoolConfig
from pactmerge.pipeline.recipe import Recipe

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
class AdaMergingConfig:
    """Layer-wise AdaMerging (``pipeline.adamerging``): λ per task and layer learned by entropy
    minimisation on the tasks' unlabeled test images. ``variants``: which to build, "none"
    (``adamerging``), "exact" / "randomized" (``pact+adamerging`` on task vectors cleaned by PACT
    with ``merge.pact_params``); empty: AdaMerging is not run. ``init``: λ's start (paper: 0.3);
    ``steps``: Adam steps; ``lr``: Adam's learning rate (paper: 1e-3); ``batch_size``: unlabeled
    images per task per step (paper: 16)."""

    variants: list[Literal["none", "exact", "randomized"]] = field(default_factory=list)
    init: float = 0.3
    steps: int = 100
    lr: float = 0.001
    batch_size: int = 16


@dataclass
class MergeConfig:
    """Merge methods to build and how to choose their scaling coefficient α."""

    # method names, or "all": every base method of the registry (expanded by pipeline.merge_stage)
    methods: list[str] | Literal["all"] = field(
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
    # precision of every evaluation's forward pass (pipeline.evaluate): "auto" (bf16 on CUDA and on
    # CPUs with native bf16 instructions, float32 elsewhere), "32" or "bf16"
    eval_precision: Literal["auto", "32", "bf16"] = "auto"
    # keep each merged encoder's weights file (true), or remove it once the evaluate stage has its
    # test predictions (false: a study of many merges of a large model keeps one file per fine-tune
    # only; `pactmerge export` makes a merge's weights again from the fine-tunes and its α)
    keep_weights: bool = True
    adamerging: AdaMergingConfig = field(default_factory=AdaMergingConfig)


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
    # seconds before the time limit at which SLURM sends SIGUSR1: a fit checkpoints and requeues itself (0: never)
    signal_seconds: int = 120
    # Lightning loggers of every fit, under RUN_DIR/lightning/<stage>/logs: "csv" (metrics.csv) and
    # "tensorboard" (when the tensorboard package is installed)
    loggers: list[Literal["csv", "tensorboard"]] = field(default_factory=lambda: ["csv"])


@dataclass
class RunConfig:
    output_dir: str = "runs/offline-default"
    seed: int = 0
    # seed replicates: the whole study once per seed (seed and recipe.seed set to it), each in
    # <output_dir>/seed-<s>/, and the report over seeds in output_dir (pipeline.replicates)
    seeds: list[int] = field(default_factory=list)
    model: ModelSpec = field(default_factory=ModelSpec)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    data: DataConfig = field(default_factory=DataConfig)
    recipe: Recipe = field(default_factory=Recipe)
    comparisons: ComparisonsConfig = field(default_factory=ComparisonsConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    pool: PoolConfig | None = None  # published checkpoints imported instead of fine-tuned (pipeline.pool)
    published: dict[str, Any] | None = None  # the published table a preset reproduces (pipeline.published)

    def to_dict(self) -> dict[str, Any]:
        """Plain values of every option a user sets (the data options a study derives from
        the model and the recipe, ``_DERIVED_DATA_KEYS``, are left out)."""
        d = to_plain(self)
        for key in _DERIVED_DATA_KEYS:
            d["data"].pop(key, None)
        return d

    def identity(self) -> dict[str, Any]:
        """The parts of the config that determine results (what makes an output directory "the same run")."""
        d = self.to_dict()
        d.pop("output_dir")
        d.pop("cluster")
        d.pop("published", None)
        d.pop("seeds", None)  # a replicate directory's config has seeds: [] and its own seed
        for k in ("num_workers", "eval_batch_size", "cache_dir"):
            d["data"].pop(k, None)
        d["merge"].pop("device", None)
        d["merge"].pop("keep_weights", None)  # what is kept on disk, not what is computed
        return d

    def identity_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (the embedded offline default when ``path`` is None).

    ``overrides`` are ``dotted.key=value`` strings (value parsed as YAML), applied after the file.
    """
    src = Path(path) if path is not None else DEFAULT_CONFIG
    if not src.is_file():
        raise ConfigError(f"{src}: no such config file")
    raw = read_yaml_file(src)
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: the top level must be a mapping of sections, got {type(raw).__name__}")
    apply_overrides(raw, overrides or [])
    _refuse_derived_data_keys(raw, str(src))
    cfg = from_dict(RunConfig, raw, where=str(src))
    validate(cfg, where=str(src))
    return cfg


# data options that a study derives from other sections: set them there
_DERIVED_DATA_KEYS = {
    "batch_size": "recipe.batch_size",
    "image_size": "the model (model.image_size, or its own preprocessing config)",
    "mean": "the model's preprocessing config",
    "std": "the model's preprocessing config",
}
_PRECISIONS = ("auto", "32-true", "32", "64-true", "64", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true")
SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed_everything bound


def _refuse_derived_data_keys(raw: Mapping[str, Any], where: str) -> None:
    data = raw.get("data")
    if isinstance(data, Mapping):
        for key, source in _DERIVED_DATA_KEYS.items():
            if key in data:
                raise ConfigError(f"{where}: data.{key} is not a study option: a study takes it from {source}; "
                                  f"remove data.{key}")


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def validate(cfg: RunConfig, *, where: str = "config") -> None:
    """Check every value for meaning (ranges, choices, method names and parameters), not only type.

    Runs at load time, before any directory is touched, so a bad value fails in seconds with
    the dotted key named rather than minutes later (or never).
    """
    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}: {key} {msg}")

    if not str(cfg.output_dir).strip():
        raise bad("output_dir", "is empty; give a directory for the run (e.g. runs/my-study)")
    for key, seed in (("seed", cfg.seed), ("recipe.seed", cfg.recipe.seed), ("data.seed", cfg.data.seed)):
        if not 0 <= seed <= SEED_MAX:
            raise bad(key, f"= {seed} is out of range: use an integer in [0, {SEED_MAX}]")
    for i, seed in enumerate(cfg.seeds):
        if not 0 <= seed <= SEED_MAX:
            raise bad(f"seeds[{i}]", f"= {seed} is out of range: use integers in [0, {SEED_MAX}]")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise bad("seeds", f"= {list(cfg.seeds)} lists a seed twice; list each replicate's seed once")
    r = cfg.recipe
    for key in ("lr", "weight_decay", "grad_clip"):
        v = getattr(r, key)
        if not _finite(v):
            raise bad(f"recipe.{key}", f"= {v} is not a finite number")
    if r.lr <= 0:
        raise bad("recipe.lr", f"= {r.lr} must be > 0")
    if r.weight_decay < 0:
        raise bad("recipe.weight_decay", f"= {r.weight_decay} must be >= 0")
    if r.grad_clip < 0:
        raise bad("recipe.grad_clip", f"= {r.grad_clip} must be >= 0 (0 turns clipping off)")
    for key in ("batch_size", "max_steps", "ckpt_every_n_steps", "log_every_n_steps"):
        if getattr(r, key) < 1:
            raise bad(f"recipe.{key}", f"= {getattr(r, key)} must be >= 1")
    if r.warmup_steps < 0:
        raise bad("recipe.warmup_steps", f"= {r.warmup_steps} must be >= 0")
    if r.precision not in _PRECISIONS:
        raise bad("recipe.precision", f"= {r.precision!r} is not a precision; use one of {', '.join(_PRECISIONS)}")
    if not _finite(float(r.limit_val_batches)) or r.limit_val_batches <= 0:
        raise bad("recipe.limit_val_batches", f"= {r.limit_val_batches} must be > 0")
    c = cfg.comparisons
    if c.joint_steps is not None and c.joint_steps < 1:
        raise bad("comparisons.joint_steps", f"= {c.joint_steps} must be >= 1 (or unset for the default)")
    _validate_tasks(cfg, bad)
    _validate_merge(cfg, bad)
    _validate_cluster(cfg, bad)
    from pactmerge.pipeline.pool import apply_pool
    from pactmerge.pipeline.published import check_published

    apply_pool(cfg, where=where)
    check_published(cfg.published, where=where)


def _validate_tasks(cfg: RunConfig, bad) -> None:
    from pactmerge.datamodules import benchmark_tasks, get_task

    try:
        if cfg.tasks.names:
            tasks = [get_task(t).key for t in cfg.tasks.names]
        elif cfg.tasks.benchmark:
            tasks = list(benchmark_tasks(cfg.tasks.benchmark))
        else:
            raise bad("tasks", "is empty: set tasks.benchmark (8, 14, 20, offline) or tasks.names (a list of task keys)")
    except ConfigError:
        raise
    except Exception as exc:  # the task registry's own message names the task and the known ones
        raise bad("tasks", f"is invalid: {exc}") from None
    if len(set(tasks)) != len(tasks):
        raise bad("tasks.names", f"lists a task twice: {tasks}")
    order = cfg.comparisons.sequential_order
    if order is not None:
        try:
            keys = [get_task(t).key for t in order]
        except Exception as exc:
            raise bad("comparisons.sequential_order", f"is invalid: {exc}") from None
        if sorted(keys) != sorted(tasks):
            raise bad("comparisons.sequential_order", f"= {list(order)} must list exactly the study's tasks "
                      f"{tasks}, each once")


def _validate_merge(cfg: RunConfig, bad) -> None:
    m = cfg.merge
    if m.alpha is not None and not _finite(m.alpha):
        raise bad("merge.alpha", f"= {m.alpha} is not a finite number")
    if m.alpha_grid is not None:
        if not m.alpha_grid:
            raise bad("merge.alpha_grid", "is empty; list the α values to search, or remove it for the default grid")
        for i, a in enumerate(m.alpha_grid):
            if not _finite(a):
                raise bad(f"merge.alpha_grid[{i}]", f"= {a} is not a finite number")
    if m.device != "auto":
        if not (m.device == "cpu" or m.device == "cuda" or
                (m.device.startswith("cuda:") and m.device[5:].isdigit())):
            raise bad("merge.device", f"= {m.device!r} is not a device; use auto, cpu, cuda or cuda:N")
    a = m.adamerging
    if not (_finite(a.init) and 0.0 <= a.init <= 1.0):
        raise bad("merge.adamerging.init", f"= {a.init}: λ lives in [0, 1]; give a value in that range")
    if a.steps < 1:
        raise bad("merge.adamerging.steps", f"= {a.steps}: give at least 1 optimizer step")
    if not (_finite(a.lr) and a.lr > 0):
        raise bad("merge.adamerging.lr", f"= {a.lr}: the learning rate must be a positive number")
    if a.batch_size < 1:
        raise bad("merge.adamerging.batch_size", f"= {a.batch_size}: give at least 1 image per task and step")
    from pactmerge.errors import MergeError
    from pactmerge.merging import get_method
    from pactmerge.pipeline.merge_plan import plan_merges, resolved_params

    methods = [m.methods] if isinstance(m.methods, str) else list(m.methods)
    for i, name in enumerate(methods):
        if name == "all":
            continue
        try:
            get_method(name)
        except MergeError as exc:
            raise bad(f"merge.methods[{i}]", f"= {name!r}: {exc}") from None
    for planned in plan_merges(m):  # every merge's parameters, resolved by the registry as the merge will
        try:
            resolved_params(planned)
        except MergeError as exc:
            raise bad("merge", f"(merge {planned.id}): {exc}; parameters come from merge.params (every merge), "
                      "merge.pact_params (PACT only) and merge.method_params.<method>") from None


def _validate_cluster(cfg: RunConfig, bad) -> None:
    d = cfg.cluster.devices
    ok = (isinstance(d, int) and (d >= 1 or d == -1)) or d == "auto" or (
        isinstance(d, str) and all(p.strip().lstrip("-").isdigit() for p in d.split(",") if p.strip())
        and d.strip() not in ("", ","))
    if not ok:
        raise bad("cluster.devices", f"= {d!r} is not a device count or list; use an integer, -1 (all), 'auto' "
                  "or a comma-separated list of device indices")
    if cfg.cluster.num_nodes < 1:
        raise bad("cluster.num_nodes", f"= {cfg.cluster.num_nodes} must be >= 1")
    if cfg.cluster.signal_seconds < 0:
        raise bad("cluster.signal_seconds", f"= {cfg.cluster.signal_seconds} must be >= 0 (0: no requeue signal)")
