"""The study: prepare, fine-tune (individual, joint, sequential), merge, evaluate, report.

Every stage is idempotent: it reads the checkpoint store's manifest and skips what is
already there, so ``pactmerge run`` continues an interrupted study where it stopped, and each
stage can run alone (``finetune --task X`` as one job of an array, ``merge``, ``evaluate``,
``report``). An output directory remembers the config that created it (``run.json``); another
config is refused unless forced, and forcing moves the old directory aside rather than
deleting it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from functools import cached_property
from pathlib import Path
from typing import Any

from pactmerge.checkpoints import CheckpointStore
from pactmerge.errors import ConfigError, StageError
from pactmerge.fileio import write_json_atomic, write_text_atomic
from pactmerge.pipeline.config import RunConfig, from_dict

log = logging.getLogger(__name__)


def resolve_tasks(cfg: RunConfig) -> list[str]:
    from pactmerge.datamodules import benchmark_tasks, get_task

    if cfg.tasks.names:
        tasks = list(cfg.tasks.names)
    elif cfg.tasks.benchmark:
        tasks = benchmark_tasks(cfg.tasks.benchmark)
    else:
        raise ConfigError("config: set tasks.benchmark (8, 14, 20, offline) or tasks.names (a list of task keys)")
    for t in tasks:
        get_task(t)  # unknown task -> error listing the known ones
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"config: tasks.names lists a task twice: {tasks}")
    return tasks


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _recorded_identity(info: dict[str, Any], where: Path) -> dict[str, Any]:
    """The identity of a recorded run, re-read through today's config types, so that an
    option added since (absent from the record) compares at its default."""
    try:
        return from_dict(RunConfig, info["config"], where=str(where)).identity()
    except (KeyError, ConfigError):
        return info.get("identity", {})


class Study:
    """One run directory and the stages that fill it. See the module docstring."""

    def __init__(self, cfg: RunConfig, *, force: bool = False, config_text: str | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        self.tasks = resolve_tasks(cfg)
        self._claim_directory(force, config_text)
        self.store = CheckpointStore(self.run_dir)

    # -- directory identity ----------------------------------------------------------------
    def _claim_directory(self, force: bool, config_text: str | None) -> None:
        info_path = self.run_dir / "run.json"
        identity = self.cfg.identity()
        if info_path.is_file():
            old = json.loads(info_path.read_text())
            diff = _diff_keys(_recorded_identity(old, info_path), identity)
            if not diff:
                return
            if not force:
                raise ConfigError(
                    f"{self.run_dir} holds a run of a different config (differs at: {', '.join(diff[:8])}); "
                    "choose another output_dir, or pass --force to move the old run aside and start over"
                )
            aside = self.run_dir.with_name(f"{self.run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            self.run_dir.rename(aside)
            log.warning("moved the previous run (another config) to %s", aside)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if config_text is not None:
            write_text_atomic(self.run_dir / "config.yaml", config_text)
        write_json_atomic(info_path, {"identity": identity, "tasks": self.tasks, "config": self.cfg.to_dict()})

    # -- shared resources (built lazily, once) ---------------------------------------------
    @cached_property
    def loaded(self):
        from pactmerge.pipeline.model import load_model

        return load_model(self.cfg.model)

    def trainer_kwargs(self) -> dict[str, Any]:
        c = self.cfg.cluster
        return {"accelerator": c.accelerator, "devices": c.devices, "num_nodes": c.num_nodes, "strategy": c.strategy}

    def data_config(self, task: str):
        dc = dataclasses.replace(
            self.cfg.data, image_size=self.loaded.image_size, mean=tuple(self.loaded.mean), std=tuple(self.loaded.std),
            batch_size=self.cfg.recipe.batch_size,
        )
        return dc

    def datamodule(self, task: str, stage: str = "fit"):
        from pactmerge.datamodules import TaskDataModule

        dms = self.__dict__.setdefault("_dms", {})
        if task not in dms:
            dm = TaskDataModule(task, self.data_config(task), train_transform=self.loaded.train_transform,
                                eval_transform=self.loaded.eval_transform)
            dm.prepare_data()
            dm.setup("fit")
            dm.setup("test")
            dms[task] = dm
        return dms[task]

    @cached_property
    def datamodules(self) -> dict[str, Any]:
        return {t: self.datamodule(t) for t in self.tasks}

    def heads(self) -> dict[str, Any]:
        """Task -> frozen (C, D) head, prepared and read from the store once per study."""
        if "_heads" not in self.__dict__:
            self.prepare()
            self._heads = {t: self.store.load_head(t) for t in self.tasks}
        return self._heads

    # -- stages ----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Store the pre-trained encoder (binding the store to it) and every task's frozen head."""
        self.store.bind(self.loaded.model_config, self.loaded.weights_sha256)
        if not self.store.has("pretrained"):
            self.store.save_state("pretrained", self.loaded.encoder_state(),
                                  {"kind": "pretrained", "model": dataclasses.asdict(self.cfg.model)})
        missing = [t for t in self.tasks if not self.store.has_head(t)]
        if missing:
            from pactmerge.datamodules import get_task
            from pactmerge.pipeline.heads import build_heads

            heads = build_heads(self.loaded, [get_task(t) for t in missing])
            for t, h in heads.items():
                self.store.save_head(t, h, {"task": t, "text_pretrained": self.loaded.text_pretrained})

    def _fit_meta(self, ckpt_dir: Path, **extra: Any) -> dict[str, Any]:
        """Steps and final validation metrics of a finished fit, from its summary file."""
        from pactmerge.pipeline.training import read_summary

        summary = read_summary(ckpt_dir) or {}
        return {"steps": summary.get("steps"), "metrics": {"fit": summary.get("metrics", {})}, **extra}

    def finetune_task(self, task: str, merge_after: bool = False) -> None:
        """Individual fine-tuning on ``task`` alone, from the pre-trained weights.

        With ``merge_after``, the fit's Trainer also carries the ``MergeCallback``, which
        builds every merge when it ends if all individual fine-tunes then exist.
        """
        from pactmerge.callbacks import StoreEncoderCallback
        from pactmerge.pipeline.training import fit_individual

        if task not in self.tasks:
            raise ConfigError(f"task {task!r} is not part of this config's tasks: {', '.join(self.tasks)}")
        name = f"finetuned/{task}"
        if self.store.has(name):
            log.info("%s: already fine-tuned, skipping", task)
            return
        heads = self.heads()
        ckpt_dir = self.store.lightning_dir(name)
        meta = {"kind": "finetuned", "task": task, "recipe": self.cfg.recipe.to_dict()}
        callbacks = [StoreEncoderCallback(self.store, name, meta)]
        if merge_after:
            callbacks.append(self.merge_callback())
        state = fit_individual(self.loaded, heads, self.datamodule(task), self.cfg.recipe, ckpt_dir=ckpt_dir,
                               trainer_kwargs=self.trainer_kwargs(), callbacks=callbacks)
        if not self.store.has(name):  # a rerun of a stage whose fit had finished before it was stored
            self.store.save_state(name, state, meta)
        self.store.update_meta(name, **self._fit_meta(ckpt_dir))

    def _joint_recipe(self):
        steps = self.cfg.comparisons.joint_steps or self.cfg.recipe.max_steps * len(self.tasks)
        return dataclasses.replace(self.cfg.recipe, max_steps=steps)

    def finetune_joint(self) -> None:
        """Joint multi-task fine-tuning: every batch from one task, through that task's head."""
        from pactmerge.datamodules import MultiTaskDataModule
        from pactmerge.pipeline.training import fit_joint

        if self.store.has("joint"):
            log.info("joint: already trained, skipping")
            return
        heads = self.heads()
        multi = MultiTaskDataModule([self.datamodule(t) for t in self.tasks],
                                    sampling=self.cfg.comparisons.joint_sampling, seed=self.cfg.seed)
        recipe = self._joint_recipe()
        ckpt_dir = self.store.lightning_dir("joint")
        state = fit_joint(self.loaded, heads, multi, recipe, ckpt_dir=ckpt_dir, trainer_kwargs=self.trainer_kwargs())
        self.store.save_state("joint", state, self._fit_meta(ckpt_dir, kind="joint", tasks=self.tasks,
                                                             sampling=self.cfg.comparisons.joint_sampling,
                                                             recipe=recipe.to_dict()))

    def sequential_order(self) -> list[str]:
        order = self.cfg.comparisons.sequential_order or self.tasks
        if sorted(order) != sorted(self.tasks):
            raise ConfigError(f"config: comparisons.sequential_order {order} must list exactly the tasks {self.tasks}")
        return list(order)

    def finetune_sequential(self) -> None:
        """Sequential fine-tuning: one task after another, each from the previous result."""
        from pactmerge.datamodules import SequentialSchedule
        from pactmerge.pipeline.training import fit_sequential

        if self.store.has("sequential"):
            log.info("sequential: already trained, skipping")
            return
        heads = self.heads()
        order = self.sequential_order()
        schedule = SequentialSchedule([self.datamodule(t) for t in order])
        ckpt_dir = self.store.lightning_dir("sequential")
        state = fit_sequential(self.loaded, heads, schedule, self.cfg.recipe, ckpt_dir=ckpt_dir,
                               trainer_kwargs=self.trainer_kwargs())
        self.store.save_state("sequential", state, {"kind": "sequential", "order": order,
                                                    "recipe": self.cfg.recipe.to_dict()})

    def merge_callback(self):
        from pactmerge.callbacks import MergeCallback, merge_specs
        from pactmerge.merging import KeyPolicy

        m = self.cfg.merge
        specs = merge_specs(m.methods, list(m.pact), m.params, m.pact_params, m.method_params)
        return MergeCallback(
            self.store, self.tasks, specs, encoder=self.loaded.encoder, heads=self.heads(),
            datamodules=self.datamodules, logit_scale=self.loaded.logit_scale,
            key_policy=KeyPolicy(conv_as_matrix=m.conv_as_matrix, exclude=tuple(m.exclude)),
            alpha_search=m.alpha_search, alpha=m.alpha, alpha_grid=m.alpha_grid, device=m.device,
        )

    def merge(self) -> dict[str, Any]:
        """Every configured merge, α chosen on validation data, evaluated on test data."""
        missing = [t for t in self.tasks if not self.store.has(f"finetuned/{t}")]
        if missing:
            raise StageError(f"merge needs the individual fine-tunes of {', '.join(missing)}; "
                             "run `pactmerge finetune CONFIG --task TASK` for each (or `pactmerge run CONFIG`) first")
        return self.merge_callback().run_all()

    def _evaluate(self, name: str, state, tasks: list[str]) -> dict[str, float]:
        from pactmerge.pipeline.evaluate import evaluate_encoder

        return evaluate_encoder(self.loaded.encoder, state, self.heads(), {t: self.datamodules[t] for t in tasks},
                                split="test", logit_scale=self.loaded.logit_scale, device=self.cfg.merge.device)

    def evaluate(self) -> None:
        """Test accuracy of the zero-shot, individual, joint and sequential encoders (cached in the manifest)."""
        self.prepare()
        plan: list[tuple[str, list[str]]] = []
        if self.cfg.comparisons.zero_shot:
            plan.append(("pretrained", self.tasks))
        plan += [(f"finetuned/{t}", [t]) for t in self.tasks]
        plan += [(n, self.tasks) for n in ("joint", "sequential") if getattr(self.cfg.comparisons, n)]
        for name, tasks in plan:
            if not self.store.has(name):
                stage = "finetune --task" if name.startswith("finetuned/") else f"finetune --{name}"
                raise StageError(f"evaluate needs {name!r}; run `pactmerge {stage} ...` (or `pactmerge run CONFIG`) first")
            metrics = dict(self.store.entry(name).get("metrics") or {})
            if all(t in metrics.get("test", {}) for t in tasks):
                continue
            log.info("evaluating %s on %s", name, ", ".join(tasks))
            metrics["test"] = self._evaluate(name, self.store.load_state(name), tasks)
            self.store.update_meta(name, metrics=metrics)

    def report(self) -> str:
        from pactmerge.pipeline.report import write_report

        paths = write_report(self.run_dir, self.tasks)
        return Path(paths["md"]).read_text()

    def run_all(self) -> str:
        """Every stage in order, skipping finished ones; returns the Markdown results table."""
        t0 = time.perf_counter()
        self.prepare()
        for i, task in enumerate(self.tasks):
            # the last individual fit hands over to the merge callback when it ends
            self.finetune_task(task, merge_after=i == len(self.tasks) - 1)
        if self.cfg.comparisons.joint:
            self.finetune_joint()
        if self.cfg.comparisons.sequential:
            self.finetune_sequential()
        self.merge()
        self.evaluate()
        table = self.report()
        log.info("study finished in %.1f s", time.perf_counter() - t0)
        return table
