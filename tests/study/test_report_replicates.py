"""Seed replicates end to end: `pactmerge run --seeds 0,1` on the tiny study (real Trainers, a tiny
open_clip ViT, real offline data), each seed a normal, resumable study directory; the report over
seeds holds the mean and std of the replicates' own results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pactmerge.cli import main
from pactmerge.errors import ConfigError
from pactmerge.pipeline.config import load_config
from pactmerge.pipeline.replicates import replicate_config, seed_dirs


def test_seeds_are_validated_and_replicate_configs_set_both_seeds(tiny_config):
    cfg = load_config(tiny_config(seeds=[3, 5]))
    sub = replicate_config(cfg, 5)
    assert (sub.seed, sub.recipe.seed, sub.seeds) == (5, 5, [])
    assert sub.output_dir.endswith("run/seed-5") and sub.data.seed == cfg.data.seed
    assert sub.identity() == replicate_config(load_config(tiny_config()), 5).identity()
    with pytest.raises(ConfigError, match="seeds.*twice"):
        load_config(tiny_config(seeds=[1, 1]))
    with pytest.raises(ConfigError, match=r"seeds\[1\]"):
        load_config(tiny_config(seeds=[0, -2]))


def test_dry_run_with_seeds_describes_the_first_replicate_and_writes_nothing(tiny_config, tmp_path, capsys):
    assert main(["run", str(tiny_config()), "--seeds", "0,2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "seed replicates 0, 2" in out and f"output directory: {tmp_path / 'run' / 'seed-0'} (new)" in out
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        main(["run", str(tiny_config()), "--seeds", "0,x"])
    assert "comma-separated integer seeds" in capsys.readouterr().err


@pytest.mark.slow
def test_two_seed_study_resumes_and_reports_mean_and_std(tiny_config, tmp_path, capsys):
    cfg = tiny_config(comparisons__sequential=False)
    run = tmp_path / "run"
    assert main(["run", str(cfg), "--seeds", "0,1"]) == 0
    assert "seeds: mean ± std" in capsys.readouterr().out
    assert list(seed_dirs(run)) == [0, 1]
    manifests = {}
    for s in (0, 1):
        identity = json.loads((run / f"seed-{s}" / "run.json").read_text())["identity"]
        assert (identity["seed"], identity["recipe"]["seed"]) == (s, s)  # each replicate: a claimed study
        text = (run / f"seed-{s}" / "config.yaml").read_text()
        assert yaml.safe_load(text)["tasks"]["names"] == ["digits", "faces"] and f"seed replicate: seed={s}" in text
        manifests[s] = json.loads((run / f"seed-{s}" / "manifest.json").read_text())["entries"]
    # the fine-tunes themselves differ between seeds
    assert manifests[0]["finetuned/digits"]["sha256"] != manifests[1]["finetuned/digits"]["sha256"]

    results = json.loads((run / "results.json").read_text())
    per_seed = [{r["name"]: r for r in json.loads((run / f"seed-{s}" / "results.json").read_text())["rows"]}
                for s in (0, 1)]
    assert results["seeds"] == [0, 1]
    assert [r["name"] for r in results["rows"]] == list(per_seed[0])
    for row in results["rows"]:
        vals = [p[row["name"]]["avg_absolute"] for p in per_seed]
        assert row["avg_seeds"]["mean"] == pytest.approx(np.mean(vals))
        assert row["avg_seeds"]["std"] == pytest.approx(np.std(vals, ddof=1))
        for t in ("digits", "faces"):
            assert row["accuracy"][t] == pytest.approx(np.mean([p[row["name"]]["accuracy"][t] for p in per_seed]))
        lo, hi = row["avg_ci95"]  # the evaluate stage keeps every model's predictions
        assert lo <= row["avg_absolute"] <= hi
    gains = [p["pact+tsvm"]["avg_absolute"] - p["tsvm"]["avg_absolute"] for p in per_seed]
    rows = {r["name"]: r for r in results["rows"]}
    assert rows["pact+tsvm"]["gain_seeds"]["mean"] == pytest.approx(np.mean(gains))
    assert rows["pact+tsvm"]["gain_seeds"]["std"] == pytest.approx(np.std(gains, ddof=1))
    g = rows["pact+tsvm"]["gain_vs_plain"]  # paired bootstrap of the seed mean
    assert g["plain"] == "tsvm" and g["mean"] == pytest.approx(np.mean(gains)) and g["ci95"][0] <= g["mean"] <= g["ci95"][1]
    assert "without_predictions" not in results["uncertainty"]

    # a rerun finds both replicates finished: nothing is rewritten
    assert main(["run", str(cfg), "--seeds", "0,1"]) == 0
    for s in (0, 1):
        after = json.loads((run / f"seed-{s}" / "manifest.json").read_text())["entries"]
        assert {n: e["sha256"] for n, e in after.items()} == {n: e["sha256"] for n, e in manifests[s].items()}
    # a single study is refused in a directory of replicates
    assert main(["run", str(cfg)]) == 2
    assert "holds seed replicates (seed-0, seed-1)" in capsys.readouterr().err
    assert not (run / "run.json").exists()
    # the report regenerates from the directory alone
    (run / "results.md").unlink()
    assert main(["report", str(run)]) == 0 and (run / "results.md").is_file()
