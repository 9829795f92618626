"""``pactmerge import``: public fine-tuned CLIP encoders into a run directory, ready for merge/evaluate/report."""

from __future__ import annotations

from pathlib import Path

from pactmerge.commands._output import show

HELP = "import fine-tuned encoders (open_clip or Hugging Face CLIP layout; files or Hub ids) into a run directory"


def add_arguments(parser):
    parser.add_argument("--store", required=True, metavar="RUN_DIR", help="run directory to create or extend")
    parser.add_argument("--model", required=True, help="open_clip model name of the pre-trained model (e.g. ViT-B-32-quickgelu)")
    parser.add_argument("--model-config", metavar="JSON", help="custom open_clip model config instead of a known name")
    parser.add_argument("--pretrained", metavar="TAG", help="open_clip pretrained tag (e.g. openai; needs a network "
                        "or its cache); with --weights it gives the text tower of the heads")
    parser.add_argument("--weights", metavar="FILE", help="weights of the pre-trained model: an open_clip state dict, a "
                        "HF checkpoint directory or Hub id, or with --legacy-pickle a zero-shot pickle")
    parser.add_argument("--task", action="append", default=[], required=True, metavar="TASK=PATH_OR_HUB_ID",
                        help="fine-tuned encoder of a task: a file, a HF checkpoint directory, a PEFT LoRA adapter directory, "
                        "or a Hub model id; repeatable")
    parser.add_argument("--config", metavar="YAML", help="base run config (data, recipe, merge settings); "
                        "default: the embedded one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run-config key, e.g. --set data.data_dir=/data (repeatable)")
    parser.add_argument("--replace", action="store_true", help="replace fine-tuned entries imported from other files")
    parser.add_argument("--cache-dir", help="Hugging Face Hub cache directory for Hub ids")
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickled torch files")
    parser.add_argument("--legacy-pickle", action="store_true",
                        help="read torch.save(model) pickles (task_vectors, tall_masks, AdaMerging: "
                        "src.modeling.ImageEncoder), --weights and --task alike, without running their code "
                        "or needing their classes")


def _parse_tasks(specs: list[str]) -> dict[str, str]:
    from pactmerge.datamodules import get_task
    from pactmerge.errors import ConfigError

    out: dict[str, str] = {}
    for spec in specs:
        task, sep, source = spec.partition("=")
        if not sep or not task.strip() or not source.strip():
            raise ConfigError(f"--task {spec!r}: expected TASK=PATH_OR_HUB_ID")
        key = get_task(task.strip()).key  # unknown tasks: error listing the known ones
        if key in out:
            raise ConfigError(f"--task: task {key!r} given twice")
        out[key] = source.strip()
    return out


def run_config(args, tasks: list[str]):
    """The run config of the imported run: the base config with this model, these tasks and this directory."""
    import json

    from pactmerge.pipeline.config import load_config

    overrides = list(args.overrides) + [
        f"output_dir={json.dumps(str(args.store))}",
        f"model.name={json.dumps(args.model)}",
        f"model.pretrained={json.dumps(args.pretrained)}",
        f"model.weights={json.dumps(str(Path(args.weights).resolve()) if args.weights else None)}",
        f"model.config={json.dumps(str(Path(args.model_config).resolve()) if args.model_config else None)}",
        f"model.trust_pickle={json.dumps(bool(args.trust_pickle))}",
        f"model.legacy_pickle={json.dumps(bool(args.legacy_pickle))}",
        "tasks.benchmark=null",
        f"tasks.names={json.dumps(tasks)}",
    ]
    return load_config(args.config, overrides)


def run(args) -> int:
    import logging

    import yaml

    from pactmerge.interop.importer import ImportOptions
    from pactmerge.pipeline.pool import import_into_run

    sources = {f"finetuned/{task}": src for task, src in _parse_tasks(args.task).items()}
    cfg = run_config(args, [name.split("/", 1)[1] for name in sources])
    options = ImportOptions(trust_pickle=args.trust_pickle, legacy_pickle=args.legacy_pickle,
                            cache_dir=args.cache_dir, replace=args.replace)
    ctx = import_into_run(cfg, sources, options, config_text=yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if not ctx.loaded.text_pretrained:
        logging.getLogger("pactmerge.import").warning(
            "the pre-trained model has no trained text tower: its heads are not CLIP zero-shot heads, so accuracies "
            "of imported CLIP checkpoints will not be meaningful; pass --pretrained or a whole CLIP model as "
            "--weights (open_clip file or Hugging Face CLIPModel)")
    show(f"run directory {args.store} is ready: pactmerge merge {Path(args.store) / 'config.yaml'}")
    return 0
