"""A pool: section or a published: block that cannot work is a named ConfigError at load time;
an adapter that does not fit the pre-trained tower is a CheckpointError naming its file."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from pactmerge.errors import CheckpointError, ConfigError


def _load(tmp_path, **sections):
    from pactmerge.pipeline.config import load_config

    cfg = {"output_dir": str(tmp_path / "run"), "tasks": {"names": ["digits", "faces"]}, **sections}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return load_config(tmp_path / "c.yaml")


def test_pool_sets_the_model_weights_and_the_comparisons(tmp_path):
    cfg = _load(tmp_path, pool={"pretrained": "pre.pt", "finetuned": {"Digits": "d.pt", "faces": "f.pt"},
                                "joint": "j.pt", "legacy_pickle": True})
    assert cfg.model.weights == "pre.pt" and cfg.model.legacy_pickle
    assert cfg.comparisons.joint and not cfg.comparisons.sequential
    from pactmerge.pipeline.pool import pool_sources

    assert pool_sources(cfg.pool, ["digits", "faces"]) == {"finetuned/digits": "d.pt", "finetuned/faces": "f.pt",
                                                            "joint": "j.pt"}
    # a pool changes the run's identity; a published table does not
    other = _load(tmp_path, pool={"pretrained": "pre.pt", "finetuned": {"digits": "d.pt", "faces": "f.pt"}},
                  published={"source": "x", "rows": {"ties": {"absolute": 50}}})
    assert other.identity() != cfg.identity()
    assert other.identity() == _load(tmp_path, pool={"pretrained": "pre.pt", "finetuned": {
        "digits": "d.pt", "faces": "f.pt"}}).identity()


def test_task_vectors_layouts(tmp_path):
    cfg = _load(tmp_path, tasks={"names": ["mnist", "stanford_cars"]},
                pool={"task_vectors_dir": "ck/ViT-B-32", "task_vectors_layout": "tall_masks"})
    from pactmerge.pipeline.pool import pool_sources

    assert cfg.model.weights == "ck/ViT-B-32/SUN397Val/nonlinear_zeroshot.pt" and cfg.model.legacy_pickle
    assert pool_sources(cfg.pool, ["mnist", "stanford_cars"]) == {
        "finetuned/mnist": "ck/ViT-B-32/MNISTVal/nonlinear_finetuned.pt",
        "finetuned/stanford_cars": "ck/ViT-B-32/CarsVal/nonlinear_finetuned.pt"}
    cfg = _load(tmp_path, tasks={"names": ["mnist"]}, pool={"task_vectors_dir": "ck"})
    assert cfg.model.weights == "ck/zeroshot.pt" and cfg.pool.finetuned == {}


@pytest.mark.parametrize("pool, match", [
    ({"finetuned": {"digits": "d", "faces": "f"}}, "pool.pretrained is missing"),
    ({"pretrained": "p", "finetuned": {"digits": "d"}}, "no checkpoint for task 'faces'"),
    ({"pretrained": "p", "finetuned": {"digits": "d", "faces": "f", "mnist": "m"}}, "pool.finetuned.mnist: not one"),
    ({"fusion_bench": "clip-vit-huge"}, "FusionBench's CLIP pools are"),
    ({"fusion_bench": "clip-vit-base-patch32", "variant": "lora-8"}, "pool.variant"),
    ({"pretrained": "p", "task_vectors_dir": "d", "task_vectors_layout": "x"}, "task_vectors_layout"),
])
def test_bad_pools_are_refused_by_key(tmp_path, pool, match):
    with pytest.raises(ConfigError, match=match):
        _load(tmp_path, pool=pool)


def test_pool_and_model_weights_must_agree(tmp_path):
    with pytest.raises(ConfigError, match="model.weights = 'other.pt' and pool.pretrained = 'p.pt' disagree"):
        _load(tmp_path, model={"weights": "other.pt"},
              pool={"pretrained": "p.pt", "finetuned": {"digits": "d", "faces": "f"}})


@pytest.mark.parametrize("published, match", [
    ({"rows": {"ties": {"absolute": 50}}}, "published.source"),
    ({"source": "s", "rows": {"ties": {"absolute": 150}}}, r"published.rows.ties.absolute = 150"),
    ({"source": "s", "rows": {"ties": {"avg": 50}}}, "published.rows.ties must give"),
    ({"source": "s", "rows": {"ties": {"absolute": 50, "stderr": 1}}}, "published.rows.ties.stderr: unknown"),
    ({"source": "s", "rows": {}}, "published.rows must map"),
])
def test_bad_published_blocks_are_refused(tmp_path, published, match):
    with pytest.raises(ConfigError, match=match):
        _load(tmp_path, published=published)


def test_adapter_for_another_model_is_refused(tmp_path):
    pytest.importorskip("transformers")
    from pool_builders import hf_clip, lora_adapter

    from pactmerge.interop import hf_to_open_clip
    from pactmerge.interop.lora import materialise_lora

    base = hf_to_open_clip(hf_clip(tmp_path / "pre").state_dict())
    lora_adapter(tmp_path / "a", seed=1, layers=3)  # the tower has 2 layers
    with pytest.raises(CheckpointError, match=r"adapter_model.safetensors: adapted module 'encoder.layers.2"):
        materialise_lora(tmp_path / "a", base)
    lora_adapter(tmp_path / "b", seed=1, r=4)
    cfg = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(CheckpointError, match="DoRA"):
        materialise_lora(tmp_path / "b", base)
    # rsLoRA scales by alpha / sqrt(r): r=4, alpha=8 -> 4 instead of 2
    factors = lora_adapter(tmp_path / "c", seed=3)
    (tmp_path / "c" / "adapter_config.json").write_text(json.dumps({**cfg, "use_rslora": True}))
    got = materialise_lora(tmp_path / "c", base)
    a, b = factors["encoder.layers.0.self_attn.q_proj"]
    want = base["transformer.resblocks.0.attn.in_proj_weight"][:32].double() + 4.0 * (b.double() @ a.double())
    assert torch.allclose(got["transformer.resblocks.0.attn.in_proj_weight"][:32], want.float(), atol=1e-6)
