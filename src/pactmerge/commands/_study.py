"""Shared argument handling of the commands that act on a study config."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_config_arguments(parser: argparse.ArgumentParser, *, optional: bool = True) -> None:
    parser.add_argument("config", nargs="?" if optional else None, default=None,
                        help="YAML run config (default: the embedded offline study)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set recipe.max_steps=50 (repeatable)")
    parser.add_argument("--output-dir", help="override output_dir")
    parser.add_argument("--force", action="store_true",
                        help="if the output directory belongs to another config, move it aside and start over")


def load_args_config(args: argparse.Namespace):
    """(RunConfig, the text recorded as RUN_DIR/config.yaml) of the command's arguments."""
    from pactmerge.pipeline.config import DEFAULT_CONFIG, load_config

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    text = Path(args.config or DEFAULT_CONFIG).read_text()
    if overrides:
        text += "".join(f"# --set {o}\n" for o in overrides)
    return cfg, text


def open_context(args: argparse.Namespace, tasks=None):
    """The ``RunContext`` of the command's config, opened by ``pipeline.study.open_study`` (resolved:
    the model and the data of ``tasks``, default all; then its run directory claimed)."""
    from pactmerge.pipeline.study import open_study

    cfg, text = load_args_config(args)
    return open_study(cfg, force=args.force, config_text=text, tasks=tasks)
