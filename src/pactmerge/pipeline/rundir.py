"""The run directory: its record (``run.json``), who owns it (``claim``), its lock (``run.lock``).

Torch-free (``pactmerge status`` reads a run directory through these functions alone).

- ``run.json`` records the config that owns the directory (``config``, its ``identity``, the
  ``tasks`` as registry keys), the merges its plan builds (``merges``: ids, so that the plan of a
  config naming ``methods: all`` is known without the method registry), the environment of the
  last job (``provenance``) and earlier environments (``provenance_history``).
- ``claim`` records a resolved context's config as the owner; a directory of another config is
  refused, or moved aside (``move_aside``) with ``--force`` or when it holds no finished stage.
- ``RunLock`` (``run.lock``): one ``pactmerge run`` at a time per directory; ``lock_state``
  reads it without taking it.
- ``record_lock`` (``.run.json.lock``): ``claim`` reads and rewrites ``run.json`` under it, so the
  worker processes of ``pactmerge run --jobs`` and SLURM array tasks that claim the directory at the
  same moment each add their line to ``provenance_history`` instead of overwriting each other's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pactmerge.errors import ConfigError, StageError
from pactmerge.fileio import write_json_atomic, write_text_atomic
from pactmerge.pipeline.config import RunConfig, from_dict

log = logging.getLogger(__name__)

RUN_INFO = "run.json"
LOCK_FILE = "run.lock"
RECORD_LOCK = ".run.json.lock"  # hidden: the store's walks and `status` skip dot files
FINISHED_KINDS = ("finetuned", "joint", "sequential", "merged")  # store entries that are finished stages


# -- the record ---------------------------------------------------------------------------------------
def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys at which the nested mappings ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _unreadable(path: Path, why: str) -> ConfigError:
    run_dir = path.parent
    return ConfigError(
        f"{path}: unreadable run description: {why}. It records which config made this run directory; "
        f"restore it by rerunning with that config: `pactmerge run {run_dir / 'config.yaml'} --output-dir "
        f"{run_dir}` (if that is refused as another config, add --force: the old directory is moved aside, "
        "not deleted), or choose another output_dir")


def read_run_info(run_dir: str | Path) -> dict[str, Any] | None:
    """``run.json`` of ``run_dir`` as a mapping, None when absent; ``ConfigError`` naming the file when it
    is not a JSON object (truncated, edited by hand, ``[]``)."""
    path = Path(run_dir) / RUN_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _unreadable(path, f"not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise _unreadable(path, f"a JSON {type(info).__name__}, not an object")
    return info


def require_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of a run directory with its ``config`` and ``tasks``; ``ConfigError`` naming the file
    (or the directory, when it is not a run directory) and what to do."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    if info is None:
        raise ConfigError(f"{run_dir}: not a run directory (no {RUN_INFO}); give the output_dir of a run")
    if not isinstance(info.get("config"), dict) or not isinstance(info.get("tasks"), list):
        raise _unreadable(run_dir / RUN_INFO, "a JSON object without 'config' and 'tasks'")
    return info


def recorded_config(info: dict[str, Any], where: Path) -> RunConfig:
    """The recorded config, read through today's config types (an option added since takes its default)."""
    return from_dict(RunConfig, info["config"], where=str(where))


def recorded_identity(info: dict[str, Any], where: Path) -> dict[str, Any]:
    """The identity of a recorded run, re-read through today's config types, so that an option added
    since (absent from the record) compares at its default."""
    try:
        return recorded_config(info, where).identity()
    except (KeyError, TypeError, ConfigError):
        return info.get("identity", {})


def comparable_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """``identity`` with ``merge.methods: all`` spelled out, so that ``all`` and the list it stands
    for are the same config (a run directory recorded with the explicit list keeps working)."""
    merge = identity.get("merge") if isinstance(identity, dict) else None
    if not isinstance(merge, dict) or "all" not in (merge.get("methods") or []) and merge.get("methods") != "all":
        return identity
    from pactmerge.pipeline.merge_plan import expand_methods

    return {**identity, "merge": {**merge, "methods": expand_methods(merge["methods"])}}


def identity_diff(run_dir: Path, info: dict[str, Any], cfg: RunConfig) -> list[str]:
    """Dotted keys at which ``cfg`` differs from the config recorded in ``info`` (empty: the same run)."""
    return diff_keys(comparable_identity(recorded_identity(info, run_dir / RUN_INFO)),
                     comparable_identity(cfg.identity()))


def has_finished_stage(run_dir: Path) -> bool:
    """Whether the store of ``run_dir`` holds a finished stage (an unreadable manifest counts as one)."""
    path = run_dir / "manifest.json"
    try:
        entries = json.loads(path.read_text()).get("entries", {})
    except (OSError, ValueError, AttributeError):
        return path.exists()  # an unreadable manifest may still describe finished work: keep it
    return any(str(name).split("/", 1)[0] in FINISHED_KINDS for name in entries)


def verify_stored(store: Any, names: Any) -> None:
    """Check the stored files of ``names`` (entries of ``store``, a ``CheckpointStore``) against their
    sha256; ``CheckpointError`` naming the first changed or missing one and the commands that redo it."""
    from pactmerge.checkpoints.manifest import check_entry
    from pactmerge.errors import CheckpointError

    root = Path(store.root)
    for name in names:
        entry = store.entry(name)
        state = check_entry(root, name, entry)
        if state in ("ok", "not kept"):
            continue
        what = ("sha256 mismatch: changed or truncated after it was stored" if state == "corrupt"
                else "listed in the manifest, but the file is gone")
        raise CheckpointError(
            f"{root / entry['file']}: {what} ({name}). Set it aside with `pactmerge status --drop-corrupt {root}`, "
            f"then rerun (`pactmerge run {root / 'config.yaml'} --output-dir {root}`): only {name} is made again")


# -- ownership --------------------------------------------------------------------------------------
def claim(ctx: Any, *, force: bool = False, config_text: str | None = None, quiet: bool = False) -> None:
    """Record ``ctx``'s config (a ``RunContext``) as the owner of its run directory (``run.json``, ``config.yaml``).

    A directory of the same config is kept as it is. One of another config is refused
    (``ConfigError`` naming the differing keys) unless ``force``, which moves it aside; one of
    another config that holds no finished stage is moved aside without asking, so a failed
    attempt never blocks a corrected config. ``quiet``: a changed environment is logged at debug
    level only (a study taking the record back from its own worker processes).
    """
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    with record_lock(ctx.run_dir):
        _claim(ctx, force=force, config_text=config_text, quiet=quiet)


@contextmanager
def record_lock(run_dir: str | Path):
    """Hold the exclusive lock of ``run_dir``'s record (``flock`` on ``.run.json.lock``) for one read
    and rewrite of ``run.json``; other processes wait (and, when the holder moved the directory aside,
    lock the new directory's file instead of the old one's). Where the file system has no locks (or no
    ``fcntl``), the record is rewritten unlocked, as before: each write stays atomic, only a
    concurrent history line can be lost."""
    fd = _locked_record(Path(run_dir))
    if fd is None:
        yield
        return
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def _locked_record(run_dir: Path) -> int | None:
    """A descriptor of ``run_dir/.run.json.lock`` holding its ``flock`` (unlocked where the file
    system refuses locks); None where there is no lock file (no ``fcntl``, or it cannot be made)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    path = run_dir / RECORD_LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            log.debug("%s: no record lock (%s)", run_dir, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            log.debug("%s: the file system refuses locks (%s); run.json is rewritten unlocked", run_dir, exc)
            return fd
        # the holder before us may have moved the directory aside (``move_aside``), taking the file
        # we waited on with it: lock the one now at ``path`` instead
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except OSError:
            pass
        os.close(fd)


def _claim(ctx: Any, *, force: bool, config_text: str | None, quiet: bool) -> None:
    from pactmerge.pipeline.merge_plan import plan_merges
    from pactmerge.provenance import changed_fields, study_record

    run_dir, identity = ctx.run_dir, ctx.cfg.identity()
    merges = [p.id for p in plan_merges(ctx.cfg.merge)]
    prov = study_record(ctx)
    info = read_run_info(run_dir)
    if info is not None:
        diff = identity_diff(run_dir, info, ctx.cfg)
        if not diff:
            old = info.get("provenance")
            if isinstance(old, dict):  # a job that opened some tasks' data keeps the others' hashes
                prov["data_sha256"] = {**(old.get("data_sha256") or {}), **prov["data_sha256"]}
            _update_record(run_dir, {**info, "merges": merges}, prov, changed_fields(old, prov),
                           rewrite=info.get("merges") != merges, quiet=quiet)
            return
        finished = has_finished_stage(run_dir)
        if finished and not force:
            raise ConfigError(
                f"{run_dir} holds a run of a different config (differs at: {', '.join(diff[:8])}); "
                "choose another output_dir, or pass --force to move the old run aside and start over"
            )
        aside = move_aside(run_dir)
        log.warning("moved the previous run (another config%s) to %s",
                    "" if finished else ", no finished stage", aside)
        ctx._store = None
    run_dir.mkdir(parents=True, exist_ok=True)
    if config_text is not None:
        write_text_atomic(run_dir / "config.yaml", config_text)
    write_json_atomic(run_dir / RUN_INFO, {"identity": identity, "tasks": ctx.task_keys, "config": ctx.cfg.to_dict(),
                                           "merges": merges, "provenance": prov})


def _update_record(run_dir: Path, info: dict[str, Any], prov: dict[str, Any], changed: list[str], *,
                   rewrite: bool = False, quiet: bool = False) -> None:
    """A rerun of the same config: finished stages are reused whatever the environment; a changed
    provenance (other versions, devices, thread counts, data) is logged, kept in ``run.json``'s
    ``provenance_history`` and replaced by the current one."""
    if "provenance" in info and not changed and not rewrite:
        return
    if "provenance" in info and changed:
        say = log.debug if quiet else log.warning
        say("%s: this rerun's environment differs from the recorded one at %s; finished stages are reused, new ones "
            "are computed under the new environment", run_dir, ", ".join(changed[:12]))
        history = list(info.get("provenance_history") or [])
        history.append({"provenance": info["provenance"], "changed": changed})
        info = {**info, "provenance_history": history}
    write_json_atomic(run_dir / RUN_INFO, {**info, "provenance": prov})


def move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to ``<name>.old-<time>`` (nothing is deleted) and create it afresh, empty;
    this process's ``run.lock`` comes back with it. Returns the old directory's new path."""
    aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(aside)
    run_dir.mkdir(parents=True, exist_ok=True)
    holder = RunLock.holder_of(aside / LOCK_FILE)
    if holder is not None and holder.get("pid") == os.getpid():
        os.replace(aside / LOCK_FILE, run_dir / LOCK_FILE)
    return aside


# -- one study at a time per run directory ------------------------------------------------------------
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
        import sys
        import tempfile

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
            if holder and holder.get("host") == me["host"] and not alive(holder.get("pid")):
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


def lock_state(run_dir: str | Path) -> dict[str, Any]:
    """``{"state": "none" | "held" | "stale" | "unreadable", pid, host, started}`` of ``run.lock``, read
    without taking it (``stale``: left by a process of this host that is gone)."""
    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return {"state": "none"}
    holder = RunLock.holder_of(path)
    if holder is None:
        return {"state": "unreadable", "path": str(path)}
    out = {"state": "held", **{k: holder.get(k) for k in ("pid", "host", "started")}}
    if holder.get("host") == socket.gethostname() and not alive(holder.get("pid")):
        out["state"] = "stale"
    return out


def alive(pid: Any) -> bool:
    """Whether process ``pid`` of this host exists."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
