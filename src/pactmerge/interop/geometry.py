"""The shape of a CLIP ViT image tower read off its open_clip state dict, and the HF config for it.

Everything but the number of attention heads can be read from the weights; the heads come
from the model config (open_clip's ``width // head_width``) or default to ``width // 64``,
the head width of every OpenAI and LAION CLIP ViT.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch

from pactmerge.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class VisionGeometry:
    """Sizes of a ViT image tower: ``width`` (hidden size), ``layers``, ``mlp_width``,
    ``patch_size``, ``image_size``, ``output_dim`` (``proj`` columns; None without ``proj``)."""

    width: int
    layers: int
    mlp_width: int
    patch_size: int
    image_size: int
    output_dim: int | None

    @classmethod
    def from_open_clip_state(cls, state: Mapping[str, torch.Tensor], *, source: str = "state dict") -> "VisionGeometry":
        """Read the sizes off an open_clip tower state dict (no prefix)."""
        try:
            conv = state["conv1.weight"]  # (width, 3, p, p)
            pos = state["positional_embedding"]  # (grid*grid + 1, width)
            fc = state["transformer.resblocks.0.mlp.c_fc.weight"]  # (mlp_width, width)
        except KeyError as exc:
            raise CheckpointError(f"{source}: missing {exc.args[0]!r}; not a complete open_clip ViT tower") from exc
        layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
        grid = math.isqrt(pos.shape[0] - 1)
        if grid * grid != pos.shape[0] - 1:
            raise CheckpointError(f"{source}: positional_embedding has {pos.shape[0]} rows, not a square grid + 1")
        proj = state.get("proj")
        return cls(
            width=int(conv.shape[0]),
            layers=layers,
            mlp_width=int(fc.shape[0]),
            patch_size=int(conv.shape[-1]),
            image_size=int(grid * conv.shape[-1]),
            output_dim=None if proj is None else int(proj.shape[1]),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def heads_from_model_config(model_config: Mapping[str, Any] | None, width: int) -> int:
    """Attention heads of the tower: open_clip's ``vision_cfg.width // vision_cfg.head_width``
    when ``model_config`` has them (head_width defaults to 64 in open_clip), else ``width // 64``."""
    vision = (model_config or {}).get("vision_cfg", model_config or {})
    head_width = int(vision.get("head_width", 64)) if isinstance(vision, Mapping) else 64
    if width % head_width:
        raise ConfigError(f"width {width} is not a multiple of head_width {head_width}; pass the number of heads")
    return width // head_width


def hidden_act_from_model_config(model_config: Mapping[str, Any]) -> str:
    """The MLP activation open_clip builds for ``model_config``: ``"quick_gelu"`` when the config
    says ``quick_gelu: true`` (the ``*-quickgelu`` models, OpenAI's weights), else ``"gelu"``."""
    return "quick_gelu" if model_config.get("quick_gelu") else "gelu"


def check_hf_compatible(model_config: Mapping[str, Any]) -> None:
    """Refuse open_clip tower options that HF's CLIP vision model cannot express (``ConfigError``)."""
    vision = model_config.get("vision_cfg") or {}
    bad = []
    if vision.get("pool_type", "tok") != "tok" or vision.get("global_average_pool"):
        bad.append(f"pool_type={vision.get('pool_type', 'avg')!r} (HF pools the class token)")
    if vision.get("attentional_pool"):
        bad.append("attentional_pool")
    if vision.get("no_ln_pre"):
        bad.append("no_ln_pre")
    if vision.get("ls_init_value") is not None:
        bad.append("layer scale (ls_init_value)")
    if vision.get("timm_model_name"):
        bad.append(f"timm tower {vision['timm_model_name']!r}")
    if bad:
        name = model_config.get("name", "this model")
        raise ConfigError(f"{name}: its image tower has options that Hugging Face's CLIPVisionModel cannot express: "
                          f"{', '.join(bad)}; export it in the open_clip format instead")


def hf_vision_config(
    geom: VisionGeometry, *, heads: int, hidden_act: str = "quick_gelu", layer_norm_eps: float = 1e-5
) -> dict[str, Any]:
    """A ``config.json`` dict for ``CLIPVisionModelWithProjection`` with the tower's sizes.

    Needs ``transformers`` (the config carries its version and defaults); a ``ConfigError``
    says how to install it when it is missing.
    """
    try:
        from transformers import CLIPVisionConfig
    except ImportError as exc:
        raise ConfigError(
            "exporting a Hugging Face checkpoint needs transformers: pip install 'pactmerge[hf]' "
            "(or pip install 'transformers>=4.40')"
        ) from exc
    if geom.width % heads:
        raise ConfigError(f"width {geom.width} is not divisible by {heads} attention heads")
    cfg = CLIPVisionConfig(
        hidden_size=geom.width,
        intermediate_size=geom.mlp_width,
        num_hidden_layers=geom.layers,
        num_attention_heads=heads,
        image_size=geom.image_size,
        patch_size=geom.patch_size,
        projection_dim=geom.output_dim or geom.width,
        hidden_act=hidden_act,
        layer_norm_eps=layer_norm_eps,
    )
    cfg.architectures = ["CLIPVisionModelWithProjection"]
    return cfg.to_dict()
