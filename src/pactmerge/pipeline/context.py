"""``RunContext``: what every stage of a study shares, built once.

A context holds the run config, its tasks (``TaskInfo``, normalised once: ``MNIST`` and
``fashion-mnist`` become the registry keys ``mnist`` and ``fashion_mnist``, so heads, store
entries and data modules all use ``info.key``), and, built on first use and then kept, the
loaded model, the checkpoint store, one data module per task and the frozen heads. Every
resource is cached the same way: a private attribute set on first use.

A context never claims or writes the run directory by itself: ``rundir.claim`` records the
config in ``run.json`` once the config, the model and the data have been resolved
(``resolve``), so a config that fails leaves no trace, and the store is opened only after
the claim.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Iterable

from pactmerge.errors import ConfigError
from pactmerge.pipeline.config import RunConfig, from_dict
from pactmerge.pipeline.rundir import (  # noqa: F401  (the run directory's functions, re-exported)
    FINISHED_KINDS, LOCK_FILE, RUN_INFO, RunLock, claim, comparable_identity, read_run_info, recorded_identity)

log = logging.getLogger(__name__)


def resolve_tasks(cfg: RunConfig) -> list:
    """The config's tasks as ``TaskInfo`` (registry keys, in config order); ``ConfigError`` for an
    unknown task (listing the known ones) or a task named twice (also under two spellings)."""
    from pactmerge.datamodules import benchmark_tasks, get_task

    if cfg.tasks.names:
        names = list(cfg.tasks.names)
    elif cfg.tasks.benchmark:
        names = benchmark_tasks(cfg.tasks.benchmark)
    else:
        raise ConfigError("config: set tasks.benchmark (8, 14, 20, offline) or tasks.names (a list of task keys)")
    infos = [get_task(t) for t in names]  # unknown task -> error listing the known ones
    keys = [i.key for i in infos]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"config: tasks.names lists a task twice: {names} (as registry keys: {keys})")
    return infos


class RunContext:
    """One study's shared state (see the module docstring).

    Args:
        cfg: the run config.
        loaded: an already loaded model (``pipeline.model.LoadedModel``); loaded on first use otherwise.
    """

    def __init__(self, cfg: RunConfig, *, loaded: Any = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        self.tasks = resolve_tasks(cfg)
        self._loaded = loaded
        self._store = None
        self._datamodules: dict[str, Any] = {}
        self._heads: dict[str, Any] | None = None
        self._evaluator = None

    # -- tasks ----------------------------------------------------------------------------------
    @property
    def task_keys(self) -> list[str]:
        return [t.key for t in self.tasks]

    def task_key(self, name: str) -> str:
        """The registry key of ``name`` (any spelling); ``ConfigError`` when it is not one of this run's tasks."""
        from pactmerge.datamodules import get_task

        key = get_task(name).key
        if key not in self.task_keys:
            raise ConfigError(f"task {name!r} is not part of this config's tasks: {', '.join(self.task_keys)}")
        return key

    def sequential_order(self) -> list[str]:
        """Task keys in the order of sequential fine-tuning (``comparisons.sequential_order``, else the task order)."""
        from pactmerge.datamodules import get_task

        given = self.cfg.comparisons.sequential_order
        order = [get_task(t).key for t in given] if given else self.task_keys
        if sorted(order) != sorted(self.task_keys):
            raise ConfigError(f"config: comparisons.sequential_order {list(given or [])} must list exactly the "
                              f"tasks {self.task_keys}")
        return order

    # -- resources, built on first use -----------------------------------------------------------
    @property
    def loaded(self):
        """The loaded model (``pipeline.model.LoadedModel``)."""
        if self._loaded is None:
            from pactmerge.pipeline.model import load_model

            self._loaded = load_model(self.cfg.model)
        return self._loaded

    @property
    def store(self):
        """The run's ``CheckpointStore`` (created in ``run_dir``; open it only after ``claim``)."""
        if self._store is None:
            from pactmerge.checkpoints import CheckpointStore

            self._store = CheckpointStore(self.run_dir)
        return self._store

    def trainer_kwargs(self) -> dict[str, Any]:
        c = self.cfg.cluster
        return {"accelerator": c.accelerator, "devices": c.devices, "num_nodes": c.num_nodes, "strategy": c.strategy,
                "loggers": list(c.loggers)}

    def data_config(self):
        """The data options with the model's input size and normalisation and the recipe's batch size."""
        loaded = self.loaded
        return dataclasses.replace(self.cfg.data, image_size=loaded.image_size, mean=tuple(loaded.mean),
                                   std=tuple(loaded.std), batch_size=self.cfg.recipe.batch_size)

    def datamodule(self, task: str):
        """The prepared and set-up ``TaskDataModule`` of ``task`` (any spelling of any registry task:
        analyses evaluate on tasks beyond the run's own)."""
        from pactmerge.datamodules import get_task

        info = get_task(task)
        key = info.key
        if key not in self._datamodules:
            from pactmerge.datamodules import TaskDataModule

            dm = TaskDataModule(info, self.data_config(), train_transform=self.loaded.train_transform,
                                eval_transform=self.loaded.eval_transform)
            dm.prepare_data()
            dm.setup("fit")
            dm.setup("test")
            self._datamodules[key] = dm
        return self._datamodules[key]

    def opened_datamodules(self) -> dict[str, Any]:
        """Task key -> data module, for the tasks whose data this context has opened so far."""
        return dict(self._datamodules)

    def datamodules(self, tasks: Iterable[str] | None = None) -> dict[str, Any]:
        """Task key -> data module, for ``tasks`` (default: every task of the run)."""
        from pactmerge.datamodules import get_task

        return {get_task(t).key: self.datamodule(t) for t in (self.task_keys if tasks is None else tasks)}

    def heads(self) -> dict[str, Any]:
        """Task key -> frozen (C, D) head, read from the store once (``stages.prepare`` writes them)."""
        if self._heads is None:
            from pactmerge.errors import StageError

            missing = [t for t in self.task_keys if not self.store.has_head(t)]
            if missing:
                raise StageError(f"{self.run_dir}: no stored head for {', '.join(missing)}; run the prepare stage "
                                 "(any of `pactmerge run|finetune|evaluate CONFIG`) first")
            self._heads = {t: self.store.load_head(t) for t in self.task_keys}
        return self._heads

    # -- evaluation ------------------------------------------------------------------------------
    def evaluator(self):
        """The study's one evaluation path (``pipeline.evaluate.Evaluator``), built on first use."""
        if self._evaluator is None:
            from pactmerge.pipeline.evaluate import Evaluator

            self._evaluator = Evaluator(self)
        return self._evaluator

    def accuracies(self, state: Any, tasks: Iterable[str] | None = None, split: str = "test",
                   subset: int | None = None) -> dict[str, float]:
        """Top-1 accuracy per task (default: the run's tasks) of the encoder with ``state`` loaded, on
        ``split`` (``val``/``test``) or on a seeded subset of ``subset`` examples per task."""
        return self.evaluator().accuracies(state, tasks, split, subset)

    def predictions(self, state: Any, tasks: Iterable[str] | None = None, split: str = "test",
                    subset: int | None = None) -> dict[str, Any]:
        """Task -> (predicted class, true label) per example, as ``accuracies`` evaluates them."""
        return self.evaluator().predictions(state, tasks, split, subset)

    # -- resolution ------------------------------------------------------------------------------
    def resolve(self, tasks: Iterable[str] | None = None) -> "RunContext":
        """Load the model and open (prepare and set up) the data of ``tasks`` (default: all), so that
        a bad model or data source fails before the run directory is touched. Returns ``self``."""
        t0 = time.perf_counter()
        keys = self.task_keys if tasks is None else [self.task_key(t) for t in tasks]
        _ = self.loaded
        for key in keys:
            self.datamodule(key)
        log.debug("resolved model and data in %.1f s", time.perf_counter() - t0)
        return self


def open_run_dir(run_dir: str | Path, *, loaded: Any = None) -> RunContext:
    """The context of an existing run directory (from its ``run.json``), without claiming anything.

    ``StageError`` when the directory has no ``run.json``; ``ConfigError`` when it is unreadable.
    """
    from pactmerge.errors import StageError

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    if info is None:
        raise StageError(
            f"{run_dir}: no {RUN_INFO}, so its model, data and heads are unknown; this needs a run directory "
            "written by `pactmerge run` or `pactmerge import`"
        )
    if "config" not in info:
        raise ConfigError(f"{run_dir / RUN_INFO}: no 'config' recorded; rerun the study with its config to rewrite it")
    cfg = from_dict(RunConfig, info["config"], where=str(run_dir / RUN_INFO))
    # the directory may have moved since it was written; output_dir is not part of its identity
    return RunContext(dataclasses.replace(cfg, output_dir=str(run_dir)), loaded=loaded)
