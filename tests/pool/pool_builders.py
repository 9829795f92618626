"""Pools built by the tests themselves: a tiny Hugging Face CLIP saved with ``save_pretrained``,
per-task ``CLIPVisionModel`` directories, PEFT LoRA adapter directories written by hand in
PEFT's format, and task_vectors-style ``torch.save(model)`` pickles. Nothing downloads."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import torch
import yaml

# the open_clip architecture of the tiny CLIP (registered from this file by model.config)
OPEN_CLIP_CFG = {
    "embed_dim": 16, "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1, "mlp_ratio": 2.0},
}
TASKS = ["digits", "faces"]


def hf_config():
    import transformers

    return transformers.CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                     "max_position_embeddings": 16, "vocab_size": 49408, "hidden_act": "quick_gelu"},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu"},
        projection_dim=16)


def _randomise(model, seed: int, scale: float = 0.2):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model


def hf_clip(directory: Path, seed: int = 0):
    """A whole tiny ``CLIPModel`` (both towers, random weights) saved as a HF checkpoint directory."""
    import transformers

    model = _randomise(transformers.CLIPModel(hf_config()), seed).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    model.save_pretrained(directory)
    return model


def hf_vision_finetune(directory: Path, base, seed: int, scale: float = 0.02):
    """A ``CLIPVisionModel`` whose weights are ``base``'s vision tower plus seeded noise, saved like
    FusionBench's per-task checkpoints (no visual projection)."""
    import transformers

    model = transformers.CLIPVisionModel(hf_config().vision_config).eval()
    tower = getattr(model, "vision_model", model)  # transformers >= 5: CLIPVisionModel is the bare tower
    tower.load_state_dict(base.vision_model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    model.save_pretrained(directory)
    return model


def lora_adapter(directory: Path, seed: int, *, r: int = 4, alpha: int = 8, prefix: str = "base_model.model.",
                 modules=("q_proj", "v_proj"), layers: int = 2) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) as PEFT writes
    it for a CLIP vision model; returns module path -> (A, B)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": None, "r": r, "lora_alpha": alpha, "lora_dropout": 0.1,
        "target_modules": list(modules), "fan_in_fan_out": False, "bias": "none", "use_rslora": False,
        "base_model_name_or_path": "openai/clip-vit-base-patch32", "inference_mode": True}))
    gen = torch.Generator().manual_seed(seed)
    tensors, factors = {}, {}
    for i in range(layers):
        for m in modules:
            module = f"encoder.layers.{i}.self_attn.{m}"
            a, b = torch.randn(r, 32, generator=gen) * 0.1, torch.randn(32, r, generator=gen) * 0.1
            tensors[f"{prefix}{module}.lora_A.weight"], tensors[f"{prefix}{module}.lora_B.weight"] = a, b
            factors[module] = (a, b)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    return factors


MODELING = textwrap.dedent('''
    import torch


    class ImageEncoder(torch.nn.Module):
        def __init__(self, model, keep_lang=False):
            super().__init__()
            self.model = model
            if not keep_lang and hasattr(self.model, "transformer"):
                delattr(self.model, "transformer")

        def forward(self, images):
            return self.model.encode_image(images)
''')


def task_vectors_pickles(root: Path, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """task_vectors' layout: ``zeroshot.pt`` and ``<Task>/finetuned.pt``, each ``torch.save`` of a
    ``src.modeling.ImageEncoder`` (text transformer deleted), written by a stand-in module that is
    gone from ``sys.path`` and ``sys.modules`` afterwards. Returns file -> its image tower."""
    import open_clip

    code = root / "legacy_code" / "src"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    (code / "modeling.py").write_text(MODELING)
    saved = {k: sys.modules.pop(k) for k in ("src", "src.modeling") if k in sys.modules}
    sys.path.insert(0, str(code.parent))
    towers = {}
    try:
        import src.modeling

        torch.manual_seed(seed)
        clip = open_clip.model.CLIP(**{k: v for k, v in OPEN_CLIP_CFG.items()})
        _randomise(clip.visual, seed)
        for name, noise in [("zeroshot.pt", 0.0), ("Digits/finetuned.pt", 0.02), ("Faces/finetuned.pt", 0.03)]:
            enc = src.modeling.ImageEncoder(_copy_clip(clip, noise, seed + len(towers) + 1))
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            torch.save(enc, root / name)
            towers[name] = {k: v.clone() for k, v in enc.model.visual.state_dict().items()}
    finally:
        sys.path[:] = [p for p in sys.path if p != str(code.parent)]
        for k in ("src", "src.modeling"):
            sys.modules.pop(k, None)
        sys.modules.update(saved)
    return towers


def _copy_clip(clip, noise: float, seed: int):
    import copy

    out = copy.deepcopy(clip)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.visual.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * noise)
    return out


def pool_config(tmp_path: Path, pool: dict, **extra) -> Path:
    """A run config of the tiny CLIP on two offline tasks with ``pool``, a short merge plan and a
    ``published:`` block."""
    model_cfg = tmp_path / "tiny_pool.json"
    model_cfg.write_text(json.dumps(OPEN_CLIP_CFG))
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name": "tiny_pool", "config": str(model_cfg)},
        "tasks": {"names": TASKS},
        "data": {"eval_batch_size": 128, "max_train": 64, "max_eval": 48, "cache_dir": str(tmp_path / "cache"),
                 "num_workers": 0},
        "merge": {"methods": ["task_arithmetic", "tsvm"], "pact": ["none", "exact"], "pact_params": {"K": 4, "k": 2},
                  "alpha_search": "grid", "alpha_grid": [0.3, 1.0]},
        "pool": pool,
        "published": {"source": "a hand-made table for the test", "rows": {
            "zero-shot": {"absolute": 10.0}, "task_arithmetic": {"absolute": 50.0, "normalized": 60.0},
            "tsvm": {"absolute": 40.0, "source": "another hand-made table"}}},
        **extra,
    }
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
