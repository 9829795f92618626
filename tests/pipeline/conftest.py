import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    from tiny import write_tiny_config

    return write_tiny_config(tmp_path_factory.mktemp("cfg"))


@pytest.fixture()
def tiny_loaded(tiny_config):
    from pactmerge.pipeline.model import ModelSpec, load_model

    return load_model(ModelSpec(config=str(tiny_config)))
