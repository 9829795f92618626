"""Tiny CLIP ViT towers with random weights, built from configs (no downloads)."""

import pytest
import torch

WIDTH, LAYERS, HEAD_WIDTH, PATCH, IMAGE, MLP, OUT = 32, 2, 8, 8, 32, 64, 16


def make_open_clip_tower(seed: int = 0):
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    torch.manual_seed(seed)
    cfg = CLIPVisionCfg(
        layers=LAYERS, width=WIDTH, head_width=HEAD_WIDTH, image_size=IMAGE, patch_size=PATCH, mlp_ratio=MLP / WIDTH
    )
    tower = _build_vision_tower(OUT, cfg, quick_gelu=True).eval()
    # open_clip initialises LayerNorms to (1, 0) and the class token small; randomise everything
    # so that a swapped or transposed tensor cannot go unnoticed
    with torch.no_grad():
        for p in tower.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return tower


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
