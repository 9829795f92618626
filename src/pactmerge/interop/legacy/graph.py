"""From the unpickled object graph to the image tower's state dict.

The module tree is walked through the placeholders' ``_parameters`` / ``_buffers`` / ``_modules``
dictionaries (non-persistent buffers left out, as ``state_dict()`` does) and through plain
mappings. The one image tower among the tensors is found by ``interop.layout.detect_layout``.
Old open_clip ``VisualTransformer`` towers have today's ``VisionTransformer`` parameter names
(``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
``transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``,
``ln_post``, ``proj``), so only the wrapper prefix (``model.visual.`` of ``ImageEncoder``,
``image_encoder.model.visual.`` of ``ImageClassifier``, ``module.`` of DataParallel) is
mapped; ``_KEY_RENAMES`` holds per-key renames should a version differ.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from pactmerge.errors import CheckpointError
from pactmerge.interop.layout import detect_layout, hf_to_open_clip
from pactmerge.interop.legacy.unpickler import LegacyObject
from pactmerge.merging.keys import normalize_keys

Tensor = torch.Tensor

# open_clip class names of old versions and today's equivalents (for the log; parameter names are the same)
CLASS_MAP = {
    "open_clip.model.VisualTransformer": "open_clip.transformer.VisionTransformer",
    "open_clip.model.VisionTransformer": "open_clip.transformer.VisionTransformer",
    "open_clip.model.Transformer": "open_clip.transformer.Transformer",
    "open_clip.model.ResidualAttentionBlock": "open_clip.transformer.ResidualAttentionBlock",
    "open_clip.model.LayerNorm": "open_clip.transformer.LayerNorm",
    "open_clip.model.QuickGELU": "open_clip.transformer.QuickGELU",
    "clip.model.VisualTransformer": "open_clip.transformer.VisionTransformer",
    "clip.model.VisionTransformer": "open_clip.transformer.VisionTransformer",
}
# (old key pattern, today's key) inside the tower, applied in order; empty while the names agree
_KEY_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = ()


def flatten(obj: Any) -> dict[str, Tensor]:
    """Every tensor reachable from ``obj`` under its dotted ``state_dict`` name (``module.`` dropped)."""
    flat: dict[str, Tensor] = {}
    _walk(obj, "", flat, set())
    return normalize_keys(flat)


def _walk(obj: Any, prefix: str, out: dict[str, Tensor], seen: set[int]) -> None:
    if isinstance(obj, Tensor):
        out.setdefault(prefix.rstrip("."), obj.detach())
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, LegacyObject):
        attrs = obj.attributes
        if "_parameters" in attrs or "_modules" in attrs:  # a torch.nn.Module
            skip = attrs.get("_non_persistent_buffers_set") or set()
            for n, v in (attrs.get("_parameters") or {}).items():
                if isinstance(v, Tensor):
                    out[prefix + n] = v.detach()
            for n, v in (attrs.get("_buffers") or {}).items():
                if isinstance(v, Tensor) and n not in skip:
                    out[prefix + n] = v.detach()
            for n, v in (attrs.get("_modules") or {}).items():
                if v is not None:
                    _walk(v, f"{prefix}{n}.", out, seen)
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(k, str):
                _walk(v, f"{prefix}{k}.", out, seen)


def image_tower(flat: Mapping[str, Tensor], source: str) -> tuple[dict[str, Tensor], str]:
    """The ``visual.*`` (open_clip CLIP layout) state of the one image tower in ``flat``, and where it
    sat (``"model.visual."``). ``CheckpointError`` when there is no tower or more than one."""
    try:
        found = detect_layout(flat, source=source)
    except CheckpointError as exc:
        what = "several image towers" if "image towers" in str(exc) else "no image tower"
        raise CheckpointError(
            f"{source}: {what} among the {len(flat)} tensors of the pickled object (first keys: "
            f"{', '.join(list(flat)[:4]) or 'none'}); expected one open_clip CLIP model ('visual.*')") from exc
    if found.layout == "hf":
        return {f"visual.{k}": v for k, v in hf_to_open_clip(flat, source=source).items()}, found.prefix
    tower = {}
    for key, value in flat.items():
        if key.startswith(found.prefix):
            rest = key[len(found.prefix):]
            for pattern, new in _KEY_RENAMES:
                rest = pattern.sub(new, rest)
            tower[f"visual.{rest}"] = value
    return tower, found.prefix
