"""A tiny open_clip ViT tower and fine-tuned variants of it, saved as plain files."""

import fixtures
import pytest
import torch


def tiny_tower_state(seed: int = 0) -> dict[str, torch.Tensor]:
    return fixtures.tiny_tower_state(seed, quick_gelu=True)


@pytest.fixture(scope="session")
def tower_files(tmp_path_factory):
    """pretrained.safetensors and two fine-tuned files (one in the Hugging Face layout, without projection)."""
    from pactmerge.fileio import save_safetensors_atomic
    from pactmerge.interop import open_clip_to_hf

    root = tmp_path_factory.mktemp("towers")
    pre = tiny_tower_state()
    gen = torch.Generator().manual_seed(1)
    fts = {t: {k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in pre.items()} for t in ("mnist", "digits")}
    save_safetensors_atomic(root / "pretrained.safetensors", pre)
    save_safetensors_atomic(root / "mnist.safetensors", fts["mnist"])
    # like the public benchmark's CLIPVisionModel checkpoints: no visual_projection (it was not fine-tuned)
    hf = open_clip_to_hf(fts["digits"])
    del hf["visual_projection.weight"]
    fts["digits"]["proj"] = pre["proj"].clone()
    save_safetensors_atomic(root / "digits_hf.safetensors", hf)
    return {"root": root, "pretrained": pre, "finetuned": fts}


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, tower_files):
    """A run directory made by ``pactmerge import``: tiny ViT, offline task ``digits``, small eval split."""
    from pactmerge.cli import main

    d = tmp_path_factory.mktemp("run")
    fixtures.tiny_vit_config(d, "tiny_vit", quick_gelu=True)
    (d / "base.yaml").write_text("data:\n  num_workers: 0\n  max_eval: 48\n  max_train: 48\n")
    root = tower_files["root"]
    rc = main(["import", "--store", str(d / "run"), "--model", "tiny_vit", "--model-config", str(d / "tiny_vit.json"),
               "--weights", str(root / "pretrained.safetensors"), "--config", str(d / "base.yaml"),
               "--task", f"digits={root / 'digits_hf.safetensors'}"])
    assert rc == 0
    return d / "run"
