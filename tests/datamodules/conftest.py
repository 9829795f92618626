"""Fixtures of the datamodule tests."""

from pathlib import Path

import pytest

from dm_helpers import make_imagefolder, make_parquet


@pytest.fixture(autouse=True, scope="session")
def _datasets_cache_under_tmp(tmp_path_factory):
    """``datasets`` writes the Arrow files it prepares under a session temporary folder, not ~/.cache."""
    import datasets

    saved = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = tmp_path_factory.mktemp("hf_datasets_cache")
    yield
    datasets.config.HF_DATASETS_CACHE = saved


@pytest.fixture
def imagefolder(tmp_path) -> Path:
    return make_imagefolder(tmp_path / "folder")


@pytest.fixture
def parquet_dir(tmp_path) -> Path:
    return make_parquet(tmp_path / "pq")


@pytest.fixture(scope="session")
def hub_sources(tmp_path_factory) -> dict[str, str]:
    """Hub-shaped fixtures of the 20 benchmark tasks (``hub_fixtures``), built once per session."""
    from hub_fixtures import build

    return build(tmp_path_factory.mktemp("hub_fixtures"))
