"""Small synthetic encoders: real open_clip-style key names, tiny shapes, low-rank-plus-noise updates."""

import pytest
import torch


def tiny_encoder(seed: int = 0, width: int = 12, layers: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {
        "conv1.weight": torch.randn(width, 3, 2, 2, generator=g),
        "class_embedding": torch.randn(width, generator=g),
        "positional_embedding": torch.randn(5, width, generator=g),
        "ln_pre.weight": torch.ones(width),
        "ln_pre.bias": torch.zeros(width),
    }
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd[p + "attn.in_proj_weight"] = torch.randn(3 * width, width, generator=g) / width**0.5
        sd[p + "attn.in_proj_bias"] = torch.randn(3 * width, generator=g) * 0.1
        sd[p + "attn.out_proj.weight"] = torch.randn(width, width, generator=g) / width**0.5
        sd[p + "mlp.c_fc.weight"] = torch.randn(2 * width, width, generator=g) / width**0.5
        sd[p + "mlp.c_proj.weight"] = torch.randn(width, 2 * width, generator=g) / width**0.5
    sd["proj"] = torch.randn(width, 8, generator=g) / width**0.5
    sd["num_batches_tracked"] = torch.tensor(7)
    return sd


def finetune(pre: dict[str, torch.Tensor], seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    out = {}
    for k, v in pre.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif v.ndim == 2:
            m, n = v.shape
            low = torch.randn(m, 2, generator=g) @ torch.randn(2, n, generator=g)
            out[k] = v + scale * (low + 0.1 * torch.randn(m, n, generator=g))
        else:
            out[k] = v + scale * torch.randn(v.shape, generator=g)
    return out


@pytest.fixture
def models():
    pre = tiny_encoder()
    return pre, [finetune(pre, t) for t in range(3)]


@pytest.fixture
def make_models():
    """make_models(width, layers, T) -> (pre, [ft_1..ft_T])."""

    def make(width: int = 12, layers: int = 2, T: int = 3):
        pre = tiny_encoder(width=width, layers=layers)
        return pre, [finetune(pre, t) for t in range(T)]

    return make
