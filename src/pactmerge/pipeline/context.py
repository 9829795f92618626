"""``RunContext``: what every stage of a study shares, built once.

A context holds the run config, its tasks (``TaskInfo``, normalised once: ``MNIST`` and
``fashion-mnist`` become the registry keys ``mnist`` and ``fashion_mnist``, so heads, store
entries and data modules all use ``info.key``), and, built on first use and then kept, the
loaded model, the checkpoint store, one data module per task and the frozen heads. Every
resource is cached the same way: a private attribute set on first use.

A context never claims or writes the run directory by itself: ``claim`` (below) records the
config in ``run.json`` once the config, the model and the data have been resolved
(``resolve``), so a config that fails leaves no trace, and the store is opened only after
the claim.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable

from pactmerge.errors import ConfigError
from pactmerge.fileio import write_json_atomic, write_text_atomic
from pactmerge.pipeline.config import RunConfig, from_dict

log = logging.getLogger(__name__)

RUN_INFO = "run.json"
FINISHED_KINDS = ("finetuned", "joint", "sequential", "merged")  # store entries that are finished stages


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


# -- the run directory's identity ------------------------------------------------------------------
def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def read_run_info(run_dir: str | Path) -> dict[str, Any] | None:
    """``run.json`` of ``run_dir`` as a mapping, None when absent; ``ConfigError`` naming the file when it
    is not a JSON object (truncated, edited by hand, ``[]``)."""
    path = Path(run_dir) / RUN_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        info, why = None, f"not valid JSON ({exc})"
    else:
        why = f"a JSON {type(info).__name__}, not an object"
    if not isinstance(info, dict):
        raise ConfigError(
            f"{path}: unreadable run description: {why}. It records which config made this run directory; "
            f"restore it from {Path(run_dir) / 'config.yaml'} by rerunning with that config and --force "
            "(the old directory is moved aside, not deleted), or choose another output_dir"
        )
    return info


def recorded_identity(info: dict[str, Any], where: Path) -> dict[str, Any]:
    """The identity of a recorded run, re-read through today's config types, so that an option added
    since (absent from the record) compares at its default."""
    try:
        return from_dict(RunConfig, info["config"], where=str(where)).identity()
    except (KeyError, TypeError, ConfigError):
        return info.get("identity", {})


def comparable_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """``identity`` with ``merge.methods: all`` spelled out, so that ``all`` and the list it stands
    for are the same config (a run directory recorded with the explicit list keeps working)."""
    merge = identity.get("merge") if isinstance(identity, dict) else None
    if not isinstance(merge, dict) or "all" not in (merge.get("methods") or []) and merge.get("methods") != "all":
        return identity
    from pactmerge.pipeline.merge_stage import expand_methods

    return {**identity, "merge": {**merge, "methods": expand_methods(merge["methods"])}}


def _has_finished_stage(run_dir: Path) -> bool:
    path = run_dir / "manifest.json"
    try:
        entries = json.loads(path.read_text()).get("entries", {})
    except (OSError, ValueError, AttributeError):
        return path.exists()  # an unreadable manifest may still describe finished work: keep it
    return any(str(name).split("/", 1)[0] in FINISHED_KINDS for name in entries)


def claim(ctx: RunContext, *, force: bool = False, config_text: str | None = None) -> None:
    """Record ``ctx``'s config as the owner of its run directory (``run.json``, ``config.yaml``).

    A directory of the same config is kept as it is. One of another config is refused
    (``ConfigError`` naming the differing keys) unless ``force``, which moves it aside; one of
    another config that holds no finished stage is moved aside without asking, so a failed
    attempt never blocks a corrected config.
    """
    from pactmerge.provenance import changed_fields, study_record

    run_dir, identity = ctx.run_dir, ctx.cfg.identity()
    prov = study_record(ctx)
    info = read_run_info(run_dir)
    if info is not None:
        diff = _diff_keys(comparable_identity(recorded_identity(info, run_dir / RUN_INFO)),
                          comparable_identity(identity))
        if not diff:
            old = info.get("provenance")
            if isinstance(old, dict):  # a job that opened some tasks' data keeps the others' hashes
                prov["data_sha256"] = {**(old.get("data_sha256") or {}), **prov["data_sha256"]}
            _update_provenance(run_dir, info, prov, changed_fields(old, prov))
            return
        finished = _has_finished_stage(run_dir)
        if finished and not force:
            raise ConfigError(
                f"{run_dir} holds a run of a different config (differs at: {', '.join(diff[:8])}); "
                "choose another output_dir, or pass --force to move the old run aside and start over"
            )
        aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        log.warning("moved the previous run (another config%s) to %s",
                    "" if finished else ", no finished stage", aside)
        ctx._store = None
        run_dir.mkdir(parents=True, exist_ok=True)
        _keep_own_lock(aside, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config_text is not None:
        write_text_atomic(run_dir / "config.yaml", config_text)
    write_json_atomic(run_dir / RUN_INFO, {"identity": identity, "tasks": ctx.task_keys, "config": ctx.cfg.to_dict(),
                                           "provenance": prov})


def _update_provenance(run_dir: Path, info: dict[str, Any], prov: dict[str, Any], changed: list[str]) -> None:
    """A rerun of the same config: finished stages are reused whatever the environment; a changed
    provenance (other versions, devices, thread counts, data) is logged, kept in ``run.json``'s
    ``provenance_history`` and replaced by the current one."""
    if "provenance" in info and not changed:
        return
    if "provenance" in info:
        log.warning("%s: this rerun's environment differs from the recorded one at %s; finished stages are "
                    "reused, new ones are computed under the new environment", run_dir, ", ".join(changed[:12]))
        history = list(info.get("provenance_history") or [])
        history.append({"provenance": info["provenance"], "changed": changed})
        info = {**info, "provenance_history": history}
    write_json_atomic(run_dir / RUN_INFO, {**info, "provenance": prov})


def _keep_own_lock(old_dir: Path, new_dir: Path) -> None:
    """Bring this process's ``run.lock`` back from a directory moved aside."""
    import os

    holder = RunLock.holder_of(old_dir / LOCK_FILE)
    if holder is not None and holder.get("pid") == os.getpid():
        os.replace(old_dir / LOCK_FILE, new_dir / LOCK_FILE)


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


# -- one study at a time per run directory ------------------------------------------------------------
LOCK_FILE = "run.lock"


class RunLock:
    """``RUN_DIR/run.lock``: held by the one ``pactmerge run`` working in a run directory.

    The file is created complete and atomically (written beside, then hard-linked into place,
    which fails when it exists) and holds ``{"pid", "host", "started", "argv"}``. A second run
    is refused with a ``StageError`` naming the holder; a lock left by a dead process on this
    host is taken over. Use as a context manager; released (the file removed) on exit.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._created_dir = False
        self._held = False

    @staticmethod
    def holder_of(path: Path) -> dict[str, Any] | None:
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def acquire(self) -> "RunLock":
        import os
        import socket
        import sys
        import tempfile

        from pactmerge.errors import StageError

        if not self.run_dir.exists():
            self.run_dir.mkdir(parents=True)
            self._created_dir = True
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv}
        for _ in range(3):
            fd, tmp = tempfile.mkstemp(dir=self.run_dir, prefix=".run.lock.")
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(me, fh)
                os.link(tmp, self.path)
                self._held = True
                return self
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
            holder = self.holder_of(self.path)
            if holder and holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                log.warning("%s: taking over the lock of process %s, which is gone", self.path, holder.get("pid"))
                self.path.unlink(missing_ok=True)
                continue
            who = (f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')})"
                   if holder else "another process")
            raise StageError(f"{self.run_dir} is in use by {who}: {self.path} is held. Wait for it to finish, "
                             "or, if that process is gone, delete the lock file and rerun")
        raise StageError(f"{self.path}: could not take the lock; delete the file if no run is using {self.run_dir}")

    def release(self) -> None:
        if self._held:
            self._held = False
            holder = self.holder_of(self.path)
            import os

            if holder is None or holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
        if self._created_dir:
            try:
                self.run_dir.rmdir()  # only when nothing else was written
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _alive(pid: int) -> bool:
    import os

    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
