"""MergeCallback: refuses to merge before the fine-tunes exist, keeps its state across a
resume (Lightning's state_dict) and never recomputes a merge that the store already holds."""

from __future__ import annotations

import pytest

from pactmerge.errors import StageError
from pactmerge.pipeline.config import load_config
from pactmerge.pipeline.run import Study

pytestmark = pytest.mark.slow


def _study(path) -> Study:
    return Study(load_config(path))


def test_merge_callback_state_and_idempotence(tiny_config):
    cfg = tiny_config(merge={"methods": ["task_arithmetic", "iso_c"], "pact": ["none", "exact"],
                             "pact_params": {"K": 4, "k": 2}, "alpha_grid": [0.5, 1.5, 2.5]})
    study = _study(cfg)
    cb = study.merge_callback()
    with pytest.raises(StageError, match="digits, faces"):
        cb.run_all()
    cb.on_fit_end(type("T", (), {"is_global_zero": True})(), None)  # nothing to merge yet: a no-op
    assert cb.results == {}

    study.finetune_task("digits")
    study.finetune_task("faces")
    results = cb.run_all()
    assert sorted(results) == sorted(["task_arithmetic", "pact+task_arithmetic", "iso_c", "pact+iso_c"])
    for entry in results.values():
        assert set(entry["metrics"]["test"]) == {"digits", "faces"}
        assert entry["alpha_search"]["evaluations"] == 3  # the configured grid, searched whole
        assert sorted(map(float, entry["alpha_search"]["curve"])) == [0.5, 1.5, 2.5]
        assert entry["alpha"] in (0.5, 1.5, 2.5)

    # Lightning's checkpoint carries the state: a restored callback knows every result
    restored = _study(cfg).merge_callback()
    restored.load_state_dict(cb.state_dict())
    assert restored.results == cb.results

    # a fresh callback set up for fitting reads finished merges from the store and redoes none
    fresh = _study(cfg).merge_callback()
    fresh.setup(None, None, stage="fit")
    assert sorted(fresh.results) == sorted(results)
    files = {n: study.store.path(f"merged/{n}").stat().st_mtime_ns for n in results}
    fresh.run_all()
    assert {n: study.store.path(f"merged/{n}").stat().st_mtime_ns for n in results} == files
