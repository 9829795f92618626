"""The loggers of a fit: CSV by default, TensorBoard on request (skipped with a warning when absent)."""

from __future__ import annotations

import importlib.util

import pytest

from pactmerge.errors import ConfigError
from pactmerge.pipeline.config import load_config
from pactmerge.pipeline.training import build_loggers


def test_csv_by_default_and_config_names_the_loggers(tmp_path):
    (csv,) = build_loggers(tmp_path)
    assert type(csv).__name__ == "CSVLogger" and csv.log_dir.startswith(str(tmp_path))
    cfg = load_config(None, ["cluster.loggers=[csv, tensorboard]"])
    assert cfg.cluster.loggers == ["csv", "tensorboard"]
    with pytest.raises(ConfigError, match="cluster.loggers"):
        load_config(None, ["cluster.loggers=[wandb]"])


def test_tensorboard_when_installed(tmp_path, caplog):
    loggers = build_loggers(tmp_path, ["csv", "tensorboard"])
    has_tb = importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
    assert len(loggers) == (2 if has_tb else 1)
    if not has_tb:
        assert "tensorboard" in caplog.text
