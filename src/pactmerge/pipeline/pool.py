"""A run config's ``pool:`` section: published checkpoints imported instead of fine-tuned.

```yaml
model: {name: ViT-B-32-quickgelu}          # the architecture; its weights come from pool.pretrained
                                           # (model.pretrained: openai adds a text tower for the heads)
pool:
  fusion_bench: clip-vit-base-patch32      # pretrained openai/<it>, task t: tanganke/<it>_<FusionBench name of t>
  variant: lora-16                         # optional: tanganke/<it>_<name>_lora-16 (PEFT adapters)
  pretrained: zeroshot.pt                  # or any source: Hub id, HF directory, open_clip file, legacy pickle
  finetuned: {dtd: DTD/finetuned.pt}       # per task; wins over fusion_bench and task_vectors_dir
  task_vectors_dir: ckpts/ViT-B-32         # task_vectors / TALL-masks pickles (legacy_pickle implied):
  task_vectors_layout: task_vectors        #   zeroshot.pt + <Name>/finetuned.pt, or tall_masks:
                                           #   <Name>Val/nonlinear_zeroshot.pt + <Name>Val/nonlinear_finetuned.pt
  joint: null                              # a multi-task checkpoint: the joint row (none when not given)
  sequential: null
  legacy_pickle: false                     # read torch.save(model) pickles without their code
```

With a pool, ``pactmerge run`` imports (``interop.importer.import_checkpoints``) instead of
fine-tuning, then merges, evaluates and reports as usual. The pre-trained source becomes
``model.weights`` (``apply_pool``, at config load), so heads come from its text tower when it has
one (a Hugging Face ``CLIPModel`` such as ``openai/clip-vit-base-patch32``, an open_clip CLIP);
joint and sequential rows appear only when their checkpoints are given.

FusionBench's hub ids use its own task names: ``FUSION_BENCH_TASKS`` is the one mapping, read off
FusionBench's pool configs (``config/modelpool/CLIPVisionModelPool/clip-vit-base-patch32_TALL20_model_only.yaml``
and the ``_TA8_lora`` pools). Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pactmerge.errors import ConfigError

# registry key -> FusionBench task name (its hub ids: tanganke/<model>_<name>[_<variant>])
FUSION_BENCH_TASKS = {
    "sun397": "sun397", "stanford_cars": "stanford-cars", "resisc45": "resisc45", "eurosat": "eurosat",
    "svhn": "svhn", "gtsrb": "gtsrb", "mnist": "mnist", "dtd": "dtd", "flowers102": "oxford_flowers102",
    "pcam": "pcam", "fer2013": "fer2013", "oxford_pets": "oxford-iiit-pet", "stl10": "stl10",
    "cifar100": "cifar100", "cifar10": "cifar10", "food101": "food101", "fashion_mnist": "fashion_mnist",
    "emnist_letters": "emnist_letters", "kmnist": "kmnist", "rendered_sst2": "rendered-sst2",
}
FUSION_BENCH_MODELS = {  # FusionBench model name -> the open_clip architecture of its openai weights
    "clip-vit-base-patch32": "ViT-B-32-quickgelu",
    "clip-vit-base-patch16": "ViT-B-16-quickgelu",
    "clip-vit-large-patch14": "ViT-L-14-quickgelu",
}
FUSION_BENCH_VARIANTS = ("lora-16",)
# registry key -> the dataset class name of task_vectors / TALL-masks / TSV / Iso checkpoints
# (their variables_and_paths.ALL_DATASETS)
TASK_VECTORS_TASKS = {
    "sun397": "SUN397", "stanford_cars": "Cars", "resisc45": "RESISC45", "eurosat": "EuroSAT", "svhn": "SVHN",
    "gtsrb": "GTSRB", "mnist": "MNIST", "dtd": "DTD", "flowers102": "Flowers102", "pcam": "PCAM",
    "fer2013": "FER2013", "oxford_pets": "OxfordIIITPet", "stl10": "STL10", "cifar100": "CIFAR100",
    "cifar10": "CIFAR10", "food101": "Food101", "fashion_mnist": "FashionMNIST", "emnist_letters": "EMNIST",
    "kmnist": "KMNIST", "rendered_sst2": "RenderedSST2",
}
TASK_VECTORS_LAYOUTS = ("task_vectors", "tall_masks")


@dataclass
class PoolConfig:
    """Where the pre-trained model and each task's fine-tune come from (see the module docstring)."""

    pretrained: str | None = None
    finetuned: dict[str, str] = field(default_factory=dict)
    fusion_bench: str | None = None
    variant: str | None = None
    joint: str | None = None
    sequential: str | None = None
    task_vectors_dir: str | None = None
    task_vectors_layout: str = "task_vectors"
    legacy_pickle: bool = False
    trust_pickle: bool = False
    cache_dir: str | None = None
    fetch: str | None = None  # how to get local sources that are missing (shown by run --dry-run)


def fusion_bench_id(model: str, task: str, variant: str | None = None) -> str:
    """The hub id of FusionBench's fine-tune of ``model`` on ``task`` (any spelling of a registry task)."""
    from pactmerge.datamodules import get_task

    key = get_task(task).key
    if key not in FUSION_BENCH_TASKS:
        raise ConfigError(f"task {key!r} has no FusionBench fine-tune; its tasks are {', '.join(FUSION_BENCH_TASKS)}")
    return f"tanganke/{model}_{FUSION_BENCH_TASKS[key]}" + (f"_{variant}" if variant else "")


def pool_sources(pool: PoolConfig, task_keys: list[str], *, where: str = "config") -> dict[str, str]:
    """Store entry -> source of every checkpoint the pool imports (``finetuned/<task>``, ``joint``, ``sequential``)."""
    from pactmerge.datamodules import get_task

    given: dict[str, str] = {}
    for name, src in (pool.finetuned or {}).items():
        try:
            key = get_task(name).key
        except ConfigError as exc:
            raise ConfigError(f"{where}: pool.finetuned.{name}: {exc}") from None
        if key not in task_keys:
            raise ConfigError(f"{where}: pool.finetuned.{name}: not one of the run's tasks ({', '.join(task_keys)})")
        given[key] = str(src)
    out: dict[str, str] = {}
    for key in task_keys:
        if key in given:
            out[f"finetuned/{key}"] = given[key]
        elif pool.task_vectors_dir:
            out[f"finetuned/{key}"] = task_vectors_path(pool, key)
        elif pool.fusion_bench:
            out[f"finetuned/{key}"] = fusion_bench_id(pool.fusion_bench, key, pool.variant)
        else:
            raise ConfigError(f"{where}: pool: no checkpoint for task {key!r}; add pool.finetuned.{key} "
                              "(a Hub id, HF directory, open_clip file or legacy pickle) or pool.fusion_bench")
    out.update({n: str(getattr(pool, n)) for n in ("joint", "sequential") if getattr(pool, n)})
    return out


def task_vectors_path(pool: PoolConfig, task: str | None = None) -> str:
    """The file of ``task``'s fine-tune (the zero-shot model when None) under ``pool.task_vectors_dir``."""
    from pathlib import Path

    root = Path(pool.task_vectors_dir).expanduser()
    tall = pool.task_vectors_layout == "tall_masks"
    if task is None:
        return str(root / f"{TASK_VECTORS_TASKS['sun397']}Val" / "nonlinear_zeroshot.pt" if tall else root / "zeroshot.pt")
    if task not in TASK_VECTORS_TASKS:
        raise ConfigError(f"task {task!r} has no task_vectors checkpoint name; add pool.finetuned.{task}")
    name = TASK_VECTORS_TASKS[task]
    return str(root / f"{name}Val" / "nonlinear_finetuned.pt" if tall else root / name / "finetuned.pt")


def pretrained_source(pool: PoolConfig) -> str | None:
    if pool.pretrained:
        return pool.pretrained
    if pool.task_vectors_dir:
        return task_vectors_path(pool)
    return f"openai/{pool.fusion_bench}" if pool.fusion_bench else None


def apply_pool(cfg: Any, *, where: str = "config") -> None:
    """Check ``cfg.pool`` and derive what it decides (at config load, before anything runs): the
    model's weights are the pre-trained source, joint/sequential rows exist only for given
    checkpoints. ``ConfigError`` names the key for a pool that cannot work."""
    pool = getattr(cfg, "pool", None)
    if pool is None:
        return
    if pool.fusion_bench is not None and pool.fusion_bench not in FUSION_BENCH_MODELS:
        raise ConfigError(f"{where}: pool.fusion_bench = {pool.fusion_bench!r}; FusionBench's CLIP pools are "
                          f"{', '.join(FUSION_BENCH_MODELS)}")
    if pool.variant is not None and (pool.variant not in FUSION_BENCH_VARIANTS or not pool.fusion_bench):
        raise ConfigError(f"{where}: pool.variant = {pool.variant!r}: use {', '.join(FUSION_BENCH_VARIANTS)} "
                          "together with pool.fusion_bench")
    if pool.task_vectors_layout not in TASK_VECTORS_LAYOUTS:
        raise ConfigError(f"{where}: pool.task_vectors_layout = {pool.task_vectors_layout!r}; use "
                          f"{' or '.join(TASK_VECTORS_LAYOUTS)}")
    if pool.task_vectors_dir:
        pool.legacy_pickle = True  # those checkpoints are torch.save(model) pickles
    pre = pretrained_source(pool)
    if pre is None:
        raise ConfigError(f"{where}: pool.pretrained is missing: the source of the pre-trained model (a Hub id, "
                          "HF directory, open_clip file or legacy pickle), or set pool.fusion_bench")
    m = cfg.model
    if m.weights not in (None, pre):
        raise ConfigError(f"{where}: model.weights = {m.weights!r} and pool.pretrained = {pre!r} disagree; "
                          "with a pool, the pre-trained weights come from pool.pretrained: remove model.weights")
    m.weights = pre
    m.legacy_pickle = m.legacy_pickle or pool.legacy_pickle
    m.trust_pickle = m.trust_pickle or pool.trust_pickle
    from pactmerge.datamodules import benchmark_tasks, get_task

    names = cfg.tasks.names or benchmark_tasks(cfg.tasks.benchmark)
    pool_sources(pool, [get_task(t).key for t in names], where=where)  # every task has a source
    cfg.comparisons.joint = bool(pool.joint)
    cfg.comparisons.sequential = bool(pool.sequential)


def import_options(pool: PoolConfig, *, replace: bool = False):
    from pactmerge.interop.importer import ImportOptions

    return ImportOptions(trust_pickle=pool.trust_pickle, legacy_pickle=pool.legacy_pickle,
                         cache_dir=pool.cache_dir, replace=replace)


def import_pool(ctx: Any) -> bool:
    """The study stage of a pool: every checkpoint imported into the run's store (kept when already
    imported from the same file). True when it imported anything."""
    from pactmerge.interop.importer import import_checkpoints
    from pactmerge.pipeline import stages

    stages.prepare(ctx)
    pool = ctx.cfg.pool
    done = import_checkpoints(ctx.store, pool_sources(pool, ctx.task_keys), ctx.loaded.encoder_state(),
                              options=import_options(pool))
    return any(v == "imported" for v in done.values())


def import_into_run(cfg: Any, sources: dict[str, str], options: Any, *, config_text: str,
                    echo: Callable[[str], None] = print) -> Any:
    """``pactmerge import``: check every checkpoint against the pre-trained model before the run
    directory is created or changed, then claim it, store the model and heads, and import.
    Returns the run's context."""
    from pactmerge.interop.importer import import_checkpoints
    from pactmerge.pipeline import stages
    from pactmerge.pipeline.context import RunContext
    from pactmerge.pipeline.model import load_model
    from pactmerge.pipeline.rundir import claim

    loaded = load_model(cfg.model)
    pretrained = loaded.encoder_state()
    import_checkpoints(None, sources, pretrained, options=options)  # a bad file leaves nothing behind
    ctx = RunContext(cfg, loaded=loaded)
    claim(ctx, config_text=config_text)
    stages.prepare(ctx)
    import_checkpoints(ctx.store, sources, pretrained, options=options, echo=echo)
    return ctx


def describe_pool(cfg: Any, task_keys: list[str]) -> list[str]:
    """``run --dry-run`` lines of a pool: each import with its kind and whether it is here; for Hub ids
    not in the local cache, the command that fetches them. Looks only at the disk."""
    from pathlib import Path

    from pactmerge.interop.importer import cached_snapshot, fetch_command, is_hub_id

    pool = cfg.pool
    items = [("pretrained", cfg.model.weights)] + list(pool_sources(pool, task_keys).items())
    lines = [f"imports ({len(items)}; no fine-tuning):"]
    missing: list[str] = []
    for name, src in items:
        if is_hub_id(src):
            here = cached_snapshot(src, cache_dir=pool.cache_dir) is not None
            state = "Hub id, in the local cache" if here else "Hub id, NOT in the local cache"
            if not here:
                missing.append(src)
        else:
            path = Path(src).expanduser()
            kind = ("PEFT LoRA adapter" if (path / "adapter_config.json").is_file() else "HF directory") \
                if path.is_dir() else ("legacy pickle" if pool.legacy_pickle and path.suffix != ".safetensors"
                                       else "weights file")
            state = f"{kind}, {'here' if path.exists() else 'MISSING'}"
            if not path.exists():
                missing.append(src)
        lines.append(f"  {name:<24} {src} ({state})")
    if cfg.model.pretrained:  # the text tower of the heads, from open_clip's weights of that tag
        repo = _open_clip_hub_repo(cfg.model.name, cfg.model.pretrained)
        here = repo is not None and cached_snapshot(repo) is not None
        lines.append(f"  {'text tower (heads)':<24} open_clip {cfg.model.name} {cfg.model.pretrained!r} weights"
                     + (f" ({repo}, {'in the local cache' if here else 'NOT in the local cache'})" if repo else ""))
        if repo and not here:
            missing.append(repo)
    if missing:
        hub = [s for s in missing if is_hub_id(s)]
        lines.append(f"not available here: {len(missing)} source(s)"
                     + ("; fetch them on a machine with a network (then set HF_HUB_OFFLINE=1):" if hub else ""))
        lines += [f"  {fetch_command(s)}" for s in hub]
        local = [s for s in missing if not is_hub_id(s)]
        if local:
            lines.append(f"  {len(local)} local file(s) missing" + (f": {pool.fetch}" if pool.fetch else
                                                                    ", e.g. " + local[0]))
    return lines


def _open_clip_hub_repo(name: str, tag: str) -> str | None:
    """The Hub repository open_clip fetches the weights of ``name``/``tag`` from (None when it names none)."""
    try:
        import open_clip

        repo = (open_clip.get_pretrained_cfg(name, tag) or {}).get("hf_hub", "")
    except Exception:  # an unknown name or tag: load_model says so when the run starts
        return None
    return repo.strip("/") or None
