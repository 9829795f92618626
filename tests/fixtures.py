"""Shared test fixtures: the one tiny open_clip ViT, and state dicts written as safetensors files.

Every test directory imports it as ``from fixtures import ...`` (``tests/`` is on ``sys.path``:
pytest puts a root ``conftest.py``'s directory there). Nothing here downloads anything.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Mapping, Sequence

import torch

# the tiny CLIP ViT of the tests: a 32x32 image in 16 patches of 8x8, 2 blocks of width 32 (2 heads)
TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def file_sha256(path: str | Path) -> str:
    """A file's sha256: compare binary files by digest, so that a failing assertion prints two
    short strings instead of a diff of their bytes (which pytest builds in full on CI)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tiny_vit_config(directory: str | Path, name: str = "tiny_vit_test", **top_level) -> Path:
    """Write ``TINY_VIT`` (with ``top_level`` keys set, e.g. ``quick_gelu=True``) as ``directory/name.json``."""
    cfg = copy.deepcopy(TINY_VIT)
    cfg.update(top_level)
    path = Path(directory) / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def tiny_tower(seed: int = 0, *, quick_gelu: bool = False, randomize: bool = False) -> torch.nn.Module:
    """The image tower of ``TINY_VIT`` (an open_clip ``VisionTransformer``), initialised from ``seed``.

    ``randomize``: every parameter drawn from N(0, 0.2^2) instead of open_clip's initialisation
    (which sets LayerNorms to (1, 0)), so that a swapped or transposed tensor cannot go unnoticed.
    """
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    torch.manual_seed(seed)
    tower = _build_vision_tower(TINY_VIT["embed_dim"], CLIPVisionCfg(**TINY_VIT["vision_cfg"]), quick_gelu=quick_gelu)
    if randomize:
        with torch.no_grad():
            for p in tower.parameters():
                p.copy_(torch.randn_like(p) * 0.2)
    return tower.eval()


def tiny_tower_state(seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
    """``tiny_tower(seed, **kwargs)``'s state dict (detached copies)."""
    return {k: v.detach().clone() for k, v in tiny_tower(seed, **kwargs).state_dict().items()}


def tiny_encoder(seed: int = 0, width: int = 12, layers: int = 2) -> dict[str, torch.Tensor]:
    """A synthetic state dict with open_clip ViT key names at toy sizes (no model behind it), for merges."""
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
    """``pre`` plus a rank-2-plus-noise update on matrices and noise elsewhere (integer buffers copied)."""
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


def model_files(
    tmp_path: str | Path, pre: Mapping[str, torch.Tensor], fts: Sequence[Mapping[str, torch.Tensor]], *, prefix: str = "task"
) -> tuple[Path, list[Path]]:
    """Save ``pre`` as ``tmp_path/pretrained.safetensors`` and ``fts[t]`` as ``tmp_path/{prefix}{t}.safetensors``.

    Returns (the pre-trained file, the fine-tuned files in the order of ``fts``)."""
    from pactmerge.fileio import save_safetensors_atomic

    root = Path(tmp_path)
    root.mkdir(parents=True, exist_ok=True)
    pre_path = root / "pretrained.safetensors"
    save_safetensors_atomic(pre_path, pre)
    paths = []
    for t, ft in enumerate(fts):
        paths.append(root / f"{prefix}{t}.safetensors")
        save_safetensors_atomic(paths[-1], ft)
    return pre_path, paths
