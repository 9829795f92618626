"""Fixtures of the datamodule tests."""

from pathlib import Path

import pytest

from dm_helpers import make_imagefolder, make_parquet


@pytest.fixture
def imagefolder(tmp_path) -> Path:
    return make_imagefolder(tmp_path / "folder")


@pytest.fixture
def parquet_dir(tmp_path) -> Path:
    return make_parquet(tmp_path / "pq")
