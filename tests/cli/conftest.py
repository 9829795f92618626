"""Fixtures for the command-line tests: small open_clip-like checkpoints written to files, and a CLI runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fixtures import model_files

WIDTH, TOKENS, PATCH, EMBED, BLOCKS = 32, 17, 4, 24, 2  # ViT-like tower: 16 patches + class token


def openclip_like_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape with the names open_clip's ViT image tower uses, at toy width (every matrix side >= 17)."""
    w = WIDTH
    shapes = {
        "visual.class_embedding": (w,),
        "visual.positional_embedding": (TOKENS, w),
        "visual.proj": (w, EMBED),
        "visual.conv1.weight": (w, 3, PATCH, PATCH),
        "visual.ln_pre.weight": (w,),
        "visual.ln_pre.bias": (w,),
    }
    for i in range(BLOCKS):
        p = f"visual.transformer.resblocks.{i}."
        shapes.update({
            p + "ln_1.weight": (w,), p + "ln_1.bias": (w,),
            p + "attn.in_proj_weight": (3 * w, w), p + "attn.in_proj_bias": (3 * w,),
            p + "attn.out_proj.weight": (w, w), p + "attn.out_proj.bias": (w,),
            p + "ln_2.weight": (w,), p + "ln_2.bias": (w,),
            p + "mlp.c_fc.weight": (4 * w, w), p + "mlp.c_fc.bias": (4 * w,),
            p + "mlp.c_proj.weight": (w, 4 * w), p + "mlp.c_proj.bias": (w,),
        })
    shapes.update({"visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,)})
    return shapes


def make_pretrained(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=gen) * 0.1).to(dtype) for k, s in openclip_like_shapes().items()}


def make_finetuned(pre: dict[str, torch.Tensor], task: int) -> dict[str, torch.Tensor]:
    """``pre`` plus a rank-3-plus-noise update on matrices and small noise elsewhere."""
    gen = torch.Generator().manual_seed(100 + task)
    out = {}
    for key, w in pre.items():
        if w.ndim == 2:
            m, n = w.shape
            delta = torch.randn(m, 3, generator=gen) @ torch.randn(3, n, generator=gen) * 0.01
            delta += 0.001 * torch.randn(m, n, generator=gen)
        else:
            delta = 0.01 * torch.randn(w.shape, generator=gen)
        out[key] = (w.float() + delta).to(w.dtype)
    return out


@dataclass
class Models:
    """Checkpoints in memory and on disk: ``pretrained`` / ``finetuned`` dicts, their ``*_path`` files."""

    pretrained: dict
    finetuned: list[dict]
    pretrained_path: Path
    finetuned_paths: list[Path]

    def argv(self) -> list[str]:
        return ["--pretrained", str(self.pretrained_path), "--finetuned", *map(str, self.finetuned_paths)]


@pytest.fixture
def write_models(tmp_path):
    """``write_models(T=3, dtype=..., edit_pre=None, edit_task=None)`` saves safetensors under ``tmp_path/in``.

    ``edit_pre(sd)`` / ``edit_task(sd)`` may change the pre-trained dict / task 1's dict in place
    before they are written (the in-memory copies returned are the edited ones).
    """

    def write(T: int = 3, dtype: torch.dtype = torch.float32, edit_pre=None, edit_task=None) -> Models:
        pre = make_pretrained(0, dtype)
        fts = [make_finetuned(pre, t) for t in range(T)]
        if edit_task:
            edit_task(fts[1])
        if edit_pre:
            edit_pre(pre)
        pre_path, paths = model_files(tmp_path / "in", pre, fts)
        return Models(pre, fts, pre_path, paths)

    return write


@pytest.fixture
def out_dir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def cli(capsys):
    """Run ``pactmerge merge ARGS`` in process; return (exit code, stdout, stderr)."""
    from pactmerge.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        rc = main(["merge", *map(str, args)])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run
