"""Tiny CLIP ViT towers with random weights, built from configs (no downloads)."""

import pytest
import torch
from fixtures import TINY_VIT, tiny_tower

_V = TINY_VIT["vision_cfg"]  # the shared tiny ViT (tests/fixtures.py)
WIDTH, LAYERS, HEAD_WIDTH, PATCH, IMAGE = _V["width"], _V["layers"], _V["head_width"], _V["patch_size"], _V["image_size"]
MLP, OUT = int(_V["width"] * _V["mlp_ratio"]), TINY_VIT["embed_dim"]


def make_open_clip_tower(seed: int = 0):
    """The tiny tower with quick GELU (as the Hugging Face twin), every parameter randomised."""
    return tiny_tower(seed, quick_gelu=True, randomize=True)


def make_hf_tower(seed: int = 0):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=MLP,
        num_hidden_layers=LAYERS,
        num_attention_heads=WIDTH // HEAD_WIDTH,
        image_size=IMAGE,
        patch_size=PATCH,
        projection_dim=OUT,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


@pytest.fixture
def tiny():
    """Sizes and builders of the tiny towers."""
    import types

    return types.SimpleNamespace(
        WIDTH=WIDTH, LAYERS=LAYERS, HEAD_WIDTH=HEAD_WIDTH, PATCH=PATCH, IMAGE=IMAGE, MLP=MLP, OUT=OUT,
        open_clip=make_open_clip_tower, hf=make_hf_tower,
    )


@pytest.fixture
def oc_tower():
    return make_open_clip_tower()


@pytest.fixture
def images():
    torch.manual_seed(123)
    return torch.randn(3, 3, IMAGE, IMAGE)
