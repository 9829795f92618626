"""PEFT LoRA adapters materialised into full image-tower weights: ``W' = W + scale · B·A``.

A PEFT adapter directory holds ``adapter_config.json`` (``peft_type: LORA``, ``r``,
``lora_alpha``, optionally ``use_rslora``, ``rank_pattern``, ``alpha_pattern``,
``fan_in_fan_out``) and ``adapter_model.safetensors`` with, per adapted linear layer,
``base_model.model.<module>.lora_A.weight`` ``(r, in)`` and ``...lora_B.weight`` ``(out, r)``.
The scale is ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA), as PEFT's
``merge_and_unload`` applies it. Module paths are those of a Hugging Face CLIP vision model
(with or without ``vision_model.``); the base weights are the pre-trained tower, taken to the
HF layout and back (both conversions are lossless), so the result is in pactmerge's layout.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from pactmerge.errors import CheckpointError
from pactmerge.interop.layout import hf_to_open_clip, open_clip_to_hf

Tensor = torch.Tensor
ADAPTER_CONFIG = "adapter_config.json"
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")


def is_lora_adapter(path: str | Path) -> bool:
    """Whether ``path`` is a PEFT adapter directory."""
    return Path(path).is_dir() and (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_file(directory: str | Path) -> Path:
    directory = Path(directory)
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: a PEFT adapter directory without adapter_model.safetensors")


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / ADAPTER_CONFIG
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable adapter config ({exc})") from exc
    if not isinstance(cfg, dict) or str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise CheckpointError(f"{path}: not a LoRA adapter (peft_type {cfg.get('peft_type')!r}); only LoRA is supported")
    if cfg.get("use_dora"):
        raise CheckpointError(f"{path}: a DoRA adapter (use_dora: true); only plain LoRA can be materialised")
    if not isinstance(cfg.get("r"), int) or cfg["r"] < 1:
        raise CheckpointError(f"{path}: 'r' must be a positive integer, got {cfg.get('r')!r}")
    return cfg


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's rule: the first pattern key that matches the end of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def scale_of(cfg: Mapping[str, Any], module: str) -> float:
    """``lora_alpha / r`` of ``module`` (``/ sqrt(r)`` with rsLoRA), with rank and alpha patterns."""
    r = _pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"])
    alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", cfg["r"]))
    return float(alpha) / (math.sqrt(r) if cfg.get("use_rslora") else float(r))


def materialise_lora(directory: str | Path, base_tower: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The open_clip tower ``base_tower`` with the adapter in ``directory`` merged into its weights.

    ``CheckpointError`` names the adapter file and the key for an adapter that does not fit
    (a module the tower does not have, A/B shapes that do not multiply to the weight's, an
    A without its B, or keys other than LoRA factors such as ``modules_to_save``)."""
    from pactmerge.fileio import load_state_dict

    directory = Path(directory)
    cfg = read_adapter_config(directory)
    file = adapter_file(directory)
    factors = load_state_dict(file)
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in factors.items():
        m = _LORA_KEY.match(key)
        if m is None:
            raise CheckpointError(f"{file}: {key!r} is not a LoRA factor (lora_A / lora_B); adapters that also save "
                                  "whole modules (modules_to_save) or other tuners are not supported")
        module = m.group("module")
        while module.startswith("vision_model."):
            module = module.removeprefix("vision_model.")
        pairs.setdefault(module, {})[m.group("part")] = value
    hf = open_clip_to_hf(base_tower, source="the pre-trained encoder")  # keys under "vision_model."
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{file}: {module} has lora_{''.join(ab)} but not both lora_A and lora_B")
        target = f"vision_model.{module}.weight"
        if target not in hf:
            raise CheckpointError(f"{file}: adapted module {module!r} is not a linear layer of the pre-trained "
                                  "CLIP vision tower; the adapter belongs to another model")
        a, b, w = ab["A"].double(), ab["B"].double(), hf[target]
        delta = b @ a
        if cfg.get("fan_in_fan_out"):
            delta = delta.T
        if tuple(delta.shape) != tuple(w.shape):
            raise CheckpointError(f"{file}: {module}: B·A has shape {tuple(delta.shape)}, the weight {tuple(w.shape)}")
        hf[target] = (w.double() + scale_of(cfg, module) * delta).to(w.dtype)
    return hf_to_open_clip(hf, source=str(file))
