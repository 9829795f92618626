"""Fixtures for end-to-end study tests: a tiny open_clip ViT and two small offline tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fixtures import tiny_vit_config


def tiny_study_config(tmp_path: Path, **overrides) -> dict:
    model_cfg = tiny_vit_config(tmp_path, "tiny_vit_study")
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name": "tiny_vit_study", "config": str(model_cfg)},
        "tasks": {"names": ["digits", "faces"]},
        "data": {"eval_batch_size": 128, "max_train": 160, "max_eval": 48, "cache_dir": str(tmp_path / "cache"),
                 "num_workers": 0},
        "recipe": {"lr": 0.001, "batch_size": 16, "warmup_steps": 2, "max_steps": 6, "ckpt_every_n_steps": 2,
                   "log_every_n_steps": 2},
        "comparisons": {"joint_steps": 6},
        "merge": {"methods": ["task_arithmetic", "tsvm"], "pact": ["none", "exact"],
                  "pact_params": {"K": 4, "k": 2}},
    }
    for dotted, value in overrides.items():
        node = cfg
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


@pytest.fixture
def tiny_config(tmp_path):
    def make(**overrides) -> Path:
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(tiny_study_config(tmp_path, **overrides)))
        return path

    return make
