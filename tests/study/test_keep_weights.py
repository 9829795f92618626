"""``merge.keep_weights: false``: each merge is evaluated at once and its weights file removed; the
record stays, the table is the same, and the weights can be made again bit for bit."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from pactmerge.checkpoints import CheckpointStore
from pactmerge.cli import main
from pactmerge.errors import CheckpointError
from pactmerge.pipeline.evaluate import predictions_path

pytestmark = pytest.mark.slow


def test_merges_not_kept_give_the_same_table_and_come_back_on_export(tiny_config, tmp_path, capsys, caplog):
    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    assert main(["run", str(tiny_config()), "--output-dir", str(kept)]) == 0
    assert main(["run", str(tiny_config(merge__keep_weights=False)), "--output-dir", str(dropped)]) == 0
    assert (kept / "results.csv").read_text() == (dropped / "results.csv").read_text()
    a = json.loads((kept / "manifest.json").read_text())["entries"]
    b = json.loads((dropped / "manifest.json").read_text())["entries"]
    merges = [n for n in a if n.startswith("merged/")]
    assert len(merges) == 4
    for name in merges:
        assert not (dropped / b[name]["file"]).exists() and b[name]["weights"] == "not kept"
        assert b[name]["sha256"] == a[name]["sha256"] and b[name]["alpha"] == a[name]["alpha"]
        assert predictions_path(dropped, name).is_file()
    assert all((dropped / b[n]["file"]).is_file() for n in b if not n.startswith("merged/"))

    # status: finished, nothing corrupt; a rerun does nothing
    capsys.readouterr()
    assert main(["status", str(dropped), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["finished"] and not status["corrupt"]
    assert main(["run", str(tiny_config(merge__keep_weights=False)), "--output-dir", str(dropped)]) == 0
    assert json.loads((dropped / "manifest.json").read_text())["entries"] == b
    # a lost manifest is rebuilt with the merges whose weights are not kept, from their sidecars
    (dropped / "manifest.json").unlink()
    assert main(["status", "--reindex", str(dropped)]) == 0
    assert json.loads((dropped / "manifest.json").read_text())["entries"] == b

    # the weights come back, equal to the kept ones, through every command that reads a store entry
    store = CheckpointStore(dropped, create=False)
    with pytest.raises(CheckpointError, match="pactmerge export --store"):
        store.load_state("merged/pact+tsvm")
    from pactmerge.commands._models import ModelSource

    with caplog.at_level(logging.INFO, logger="pactmerge"):
        rebuilt = ModelSource(dropped).from_store("merged/pact+tsvm")
    assert "sha256 as recorded" in caplog.text
    reference = ModelSource(kept).from_store("merged/pact+tsvm")
    assert rebuilt.keys() == reference.keys() and all(torch.equal(rebuilt[k], reference[k]) for k in reference)
    out = tmp_path / "export" / "pact_tsvm.safetensors"
    assert main(["export", "--store", str(dropped), "--name", "merged/pact+tsvm", "--format", "open_clip",
                 "--out", str(out)]) == 0
    assert out.is_file()


def test_disk_need_counts_one_merge_when_merges_are_not_kept(tiny_config):
    from pactmerge.pipeline import stages, study
    from pactmerge.pipeline.config import load_config

    ctx = study.open_study(load_config(tiny_config(merge__keep_weights=False)))
    stages.prepare(ctx)
    size = ctx.store.path("pretrained").stat().st_size
    # 2 fine-tunes + joint + sequential + one merge at a time, and a fit's checkpoint and final state
    assert study.disk_need(ctx) == size * (2 + 2 + 1 + 4)
