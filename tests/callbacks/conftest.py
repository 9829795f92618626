"""The study tests' tiny config (a tiny open_clip ViT and two small offline tasks), shared here."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("study_fixtures", Path(__file__).parents[1] / "study" / "conftest.py")
_study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_study)

tiny_config = _study.tiny_config
