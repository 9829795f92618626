"""Export an encoder as an open_clip state dict or as a Hugging Face checkpoint directory.

* ``open_clip``: one safetensors file with the image tower's keys (no ``visual.`` prefix; this
  is what ``ModelSpec.weights`` and ``open_clip``'s ``model.visual.load_state_dict`` take),
  plus a JSON sidecar (``<out>.json``) with the provenance.
* ``hf``: a directory with ``config.json`` (``CLIPVisionModelWithProjection``) and
  ``model.safetensors`` (``vision_model.*`` + ``visual_projection.weight``), loadable with
  ``transformers.CLIPVisionModelWithProjection.from_pretrained(dir)``; and
  ``pactmerge.json`` with the provenance. Building the config needs ``transformers``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from pactmerge.errors import CheckpointError, ConfigError
from pactmerge.fileio import (
    check_weights_destination, save_safetensors_atomic, write_json_atomic, write_weights_with_sidecar)
from pactmerge.interop.geometry import (
    VisionGeometry,
    check_hf_compatible,
    heads_from_model_config,
    hf_vision_config,
    hidden_act_from_model_config,
)
from pactmerge.interop.layout import detect_layout, open_clip_to_hf

log = logging.getLogger(__name__)
Tensor = torch.Tensor
FORMATS = ("open_clip", "hf")


def export_open_clip(state: Mapping[str, Tensor], out: str | Path, *, meta: Mapping[str, Any] | None = None) -> list[Path]:
    """Write ``state`` (open_clip tower layout) to the safetensors file ``out`` and its sidecar
    ``<out>.json`` (``fileio.sidecar_path``: ``merged.safetensors.json``, as merge and transfer)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: the open_clip export is a safetensors file; name it *.safetensors")
    check_weights_destination(out, "--out")
    sidecar = write_weights_with_sidecar(out, state, {"format": "open_clip", "tensors": len(state), **dict(meta or {})},
                                         metadata={"format": "pt", "layout": "open_clip"})
    return [out, sidecar]


def export_hf(
    state: Mapping[str, Tensor],
    out_dir: str | Path,
    *,
    model_config: Mapping[str, Any] | None = None,
    heads: int | None = None,
    hidden_act: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``state`` (an open_clip ViT tower) as a HF ``CLIPVisionModelWithProjection`` directory.

    ``heads`` and ``hidden_act`` default to what ``model_config`` (an open_clip model config,
    as the store records it) says, else to ``width // 64`` and ``"quick_gelu"`` (OpenAI CLIP).
    The config is built before anything is written, so a missing ``transformers`` leaves no files.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a directory; the HF export is a directory")
    try:
        det = detect_layout(state, source="the encoder")
    except CheckpointError as exc:
        raise ConfigError(f"only CLIP ViT image towers can be exported in the Hugging Face format ({exc})") from exc
    if det.layout != "open_clip" or det.prefix:
        raise ConfigError("export_hf expects an open_clip tower state dict without prefix")
    if model_config:
        check_hf_compatible(model_config)
    geom = VisionGeometry.from_open_clip_state(state)
    if geom.output_dim is None:
        raise ConfigError("the encoder has no 'proj'; HF CLIPVisionModelWithProjection needs the projection")
    if heads is None:
        heads = heads_from_model_config(model_config, geom.width)
    if hidden_act is None:
        hidden_act = hidden_act_from_model_config(model_config) if model_config else "quick_gelu"
    config = hf_vision_config(geom, heads=heads, hidden_act=hidden_act)
    tensors = open_clip_to_hf(state, prefix="vision_model.")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "model.safetensors", out_dir / "config.json", out_dir / "pactmerge.json"]
    save_safetensors_atomic(paths[0], tensors, metadata={"format": "pt"})
    write_json_atomic(paths[1], config)
    write_json_atomic(paths[2], {"format": "hf", "heads": heads, "hidden_act": hidden_act,
                                 "geometry": geom.as_dict(), **dict(meta or {})})
    log.info("wrote %s (CLIPVisionModelWithProjection, %d layers, width %d, %d heads, %s)",
             out_dir, geom.layers, geom.width, heads, hidden_act)
    return paths
