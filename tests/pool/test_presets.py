"""The reproduction presets (configs/reproduce/*.yaml) dry-run offline, plan imports and no fine-tunes,
list every merge with and without PACT, and name what is not cached and how to fetch it; the
FusionBench hub ids come from one task-name mapping that matches FusionBench's own pool configs."""

from __future__ import annotations

from pathlib import Path

import pytest

PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs" / "reproduce").glob("*.yaml"))

# FusionBench's pool config/modelpool/CLIPVisionModelPool/clip-vit-base-patch32_TALL20_model_only.yaml
# (tanganke/fusion_bench): its task name -> hub id
FUSION_BENCH_TALL20 = {
    "sun397": "tanganke/clip-vit-base-patch32_sun397",
    "stanford-cars": "tanganke/clip-vit-base-patch32_stanford-cars",
    "resisc45": "tanganke/clip-vit-base-patch32_resisc45",
    "eurosat": "tanganke/clip-vit-base-patch32_eurosat",
    "svhn": "tanganke/clip-vit-base-patch32_svhn",
    "gtsrb": "tanganke/clip-vit-base-patch32_gtsrb",
    "mnist": "tanganke/clip-vit-base-patch32_mnist",
    "dtd": "tanganke/clip-vit-base-patch32_dtd",
    "oxford_flowers102": "tanganke/clip-vit-base-patch32_oxford_flowers102",
    "pcam": "tanganke/clip-vit-base-patch32_pcam",
    "fer2013": "tanganke/clip-vit-base-patch32_fer2013",
    "oxford-iiit-pet": "tanganke/clip-vit-base-patch32_oxford-iiit-pet",
    "stl10": "tanganke/clip-vit-base-patch32_stl10",
    "cifar100": "tanganke/clip-vit-base-patch32_cifar100",
    "cifar10": "tanganke/clip-vit-base-patch32_cifar10",
    "food101": "tanganke/clip-vit-base-patch32_food101",
    "fashion_mnist": "tanganke/clip-vit-base-patch32_fashion_mnist",
    "emnist_letters": "tanganke/clip-vit-base-patch32_emnist_letters",
    "kmnist": "tanganke/clip-vit-base-patch32_kmnist",
    "rendered-sst2": "tanganke/clip-vit-base-patch32_rendered-sst2",
}


def test_fusion_bench_ids_match_its_pool_configs():
    from pactmerge.datamodules import benchmark_tasks
    from pactmerge.pipeline.pool import fusion_bench_id

    ours = [fusion_bench_id("clip-vit-base-patch32", t) for t in benchmark_tasks("20")]
    assert sorted(ours) == sorted(FUSION_BENCH_TALL20.values()) and len(set(ours)) == 20
    # ..._TA8_lora.yaml: peft_name tanganke/clip-vit-base-patch16_stanford-cars_lora-16
    assert fusion_bench_id("clip-vit-base-patch16", "stanford_cars", "lora-16") == \
        "tanganke/clip-vit-base-patch16_stanford-cars_lora-16"


def test_there_are_presets_for_the_tables():
    names = {p.stem for p in PRESETS}
    assert {"fusionbench_vitb32_8tasks", "fusionbench_vitl14_8tasks", "fusionbench_vitb32_20tasks",
            "fusionbench_vitl14_20tasks", "tallmasks_vitb32_20tasks", "tallmasks_vitl14_20tasks"} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_dry_runs_offline(preset, tmp_path, monkeypatch, capsys):
    from pactmerge.cli import main
    from pactmerge.pipeline.config import load_config
    from pactmerge.pipeline.merge_plan import plan_merges
    from pactmerge.pipeline.pool import pool_sources

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))  # nothing is cached
    cfg = load_config(preset)
    assert cfg.pool is not None and cfg.published["source"]
    assert not cfg.comparisons.joint and not cfg.comparisons.sequential  # no checkpoints given
    assert main(["run", "--dry-run", str(preset)]) == 0
    out = capsys.readouterr().out
    assert "no fine-tuning" in out and "finetune_" not in out
    assert "\n  import " in out
    sources = pool_sources(cfg.pool, _task_keys(cfg))
    for entry, source in sources.items():
        assert f"{entry:<24} {source}" in out
    ids = [p.id for p in plan_merges(cfg.merge)]
    bases = {i for i in ids if not i.startswith("pact+")}
    assert bases and all(f"pact+{b}" in ids for b in bases)  # every merge with and without PACT
    assert all(f"merged/{i}" in out for i in ids)
    assert "not available here" in out
    if cfg.pool.fusion_bench:
        assert f"huggingface-cli download {sources[next(iter(sources))]}" in out
    else:
        assert cfg.pool.fetch in out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    rows = {"zero-shot", "individual", *ids, "adamerging", "pact+adamerging"}
    assert set(cfg.published["rows"]) <= rows


def _task_keys(cfg) -> list[str]:
    from pactmerge.pipeline.context import resolve_tasks

    return [t.key for t in resolve_tasks(cfg)]
