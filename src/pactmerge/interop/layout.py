"""Lossless conversion between the two public layouts of a CLIP ViT image tower.

* ``open_clip``: ``VisionTransformer.state_dict()`` (``conv1.weight``, ``class_embedding``,
  ``positional_embedding``, ``ln_pre``, ``transformer.resblocks.N.{ln_1, attn.in_proj_weight,
  attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_post``, ``proj``), with
  q, k and v packed in ``in_proj`` (rows ``[q; k; v]``). This is pactmerge's own layout: every
  merge method and PACT act on it.
* ``hf``: Hugging Face ``CLIPVisionModel`` / ``CLIPVisionModelWithProjection`` / ``CLIPModel``
  (``vision_model.embeddings.{class_embedding, patch_embedding.weight,
  position_embedding.weight}``, ``vision_model.pre_layrnorm``,
  ``vision_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, layer_norm2,
  mlp.fc1, mlp.fc2}``, ``vision_model.post_layernorm`` and, when present, the separate
  ``visual_projection.weight`` of shape ``(D_out, width)`` = ``proj.T``).

Both directions only move, split, concatenate and transpose tensors: values and dtypes are
kept bit for bit, and ``hf -> open_clip -> hf`` is the identity. This module does not import
``transformers``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Mapping

import torch

from pactmerge.errors import CheckpointError

Layout = Literal["open_clip", "hf"]
Tensor = torch.Tensor

_OC_ANCHOR = "conv1.weight"
_OC_BLOCK = "transformer.resblocks.0.attn.in_proj_weight"
_HF_ANCHOR = "embeddings.patch_embedding.weight"
_HF_BLOCK = "encoder.layers.0.self_attn.q_proj.weight"
_HF_PROJ = "visual_projection.weight"
HF_PREFIX = "vision_model."

# per-block renames (open_clip suffix <-> HF suffix) that are pure renames
_BLOCK_RENAMES = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP_RENAMES = {
    "conv1.weight": "embeddings.patch_embedding.weight",
    "class_embedding": "embeddings.class_embedding",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight",
    "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight",
    "ln_post.bias": "post_layernorm.bias",
}
# buffers that older transformers versions saved and that carry no weights
_HF_IGNORED = re.compile(r"^embeddings\.position_ids$")
_OC_BLOCK_RE = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_HF_BLOCK_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class DetectedLayout:
    """Where a CLIP vision tower sits inside a state dict.

    ``prefix`` is prepended to every tower key (``"visual."`` in a whole open_clip CLIP,
    ``"vision_model."`` in most HF checkpoints, ``""`` for a bare tower); ``proj_key`` is the
    HF ``visual_projection.weight`` key when the checkpoint has one.
    """

    layout: Layout
    prefix: str
    proj_key: str | None = None


def _sample(keys, n: int = 6) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} keys)" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def detect_layout(state: Mapping[str, Tensor], *, source: str = "state dict") -> DetectedLayout:
    """Recognise the open_clip or HF CLIP ViT layout of ``state`` (a whole CLIP model or its image tower).

    Raises ``CheckpointError`` naming sample keys when neither layout is found, or when the
    state holds more than one image tower.
    """
    found: list[DetectedLayout] = []
    for key in state:
        if key.endswith(_OC_ANCHOR) and (key[: -len(_OC_ANCHOR)] + _OC_BLOCK) in state:
            found.append(DetectedLayout("open_clip", key[: -len(_OC_ANCHOR)]))
        elif key.endswith(_HF_ANCHOR) and (key[: -len(_HF_ANCHOR)] + _HF_BLOCK) in state:
            prefix = key[: -len(_HF_ANCHOR)]
            # visual_projection sits beside vision_model, not inside it
            outer = prefix[: -len(HF_PREFIX)] if prefix.endswith(HF_PREFIX) else prefix
            proj = outer + _HF_PROJ if (outer + _HF_PROJ) in state else None
            found.append(DetectedLayout("hf", prefix, proj))
    if not found:
        raise CheckpointError(
            f"{source}: not a CLIP ViT image tower in a layout pactmerge knows (open_clip keys such as "
            f"'conv1.weight' and '{_OC_BLOCK}', or Hugging Face keys such as 'vision_model.{_HF_ANCHOR}' and "
            f"'vision_model.{_HF_BLOCK}'); its keys are {_sample(state)}"
        )
    if len(found) > 1:
        raise CheckpointError(
            f"{source}: holds {len(found)} image towers (prefixes {[f.prefix for f in found]}); "
            "save the one tower you mean on its own"
        )
    return found[0]


def _tower(state: Mapping[str, Tensor], det: DetectedLayout) -> dict[str, Tensor]:
    return {k[len(det.prefix) :]: v for k, v in state.items() if k.startswith(det.prefix)}


def _num_blocks(keys, pattern: re.Pattern) -> int:
    idx = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if idx and idx != set(range(max(idx) + 1)):
        missing = sorted(set(range(max(idx) + 1)) - idx)
        raise CheckpointError(f"transformer blocks {missing} are missing from the image tower")
    return len(idx)


def hf_to_open_clip(state: Mapping[str, Tensor], *, source: str = "state dict") -> dict[str, Tensor]:
    """Convert a HF CLIP vision state dict (any recognised prefix) to the open_clip tower layout.

    q/k/v projections are packed as ``in_proj = cat([q, k, v])`` (weights and biases);
    ``proj = visual_projection.weight.T`` when the checkpoint has a projection (a plain
    ``CLIPVisionModel`` has none, and the result then has no ``proj`` key). Text-tower keys of
    a whole ``CLIPModel`` are ignored. Unknown tower keys are refused by name.
    """
    det = detect_layout(state, source=source)
    if det.layout != "hf":
        raise CheckpointError(f"{source}: expected the Hugging Face CLIP layout, found open_clip keys")
    tower = _tower(state, det)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for oc, hf in _TOP_RENAMES.items():
        if hf in tower:
            out[oc] = tower[hf]
            used.add(hf)
    for i in range(_num_blocks(tower, _HF_BLOCK_RE)):
        hp, op = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for oc, hf in _BLOCK_RENAMES.items():
            if hp + hf in tower:
                out[op + oc] = tower[hp + hf]
                used.add(hp + hf)
        for kind in ("weight", "bias"):
            parts = [hp + f"self_attn.{p}_proj.{kind}" for p in "qkv"]
            present = [p in tower for p in parts]
            if all(present):
                out[op + f"attn.in_proj_{kind}"] = torch.cat([tower[p] for p in parts], dim=0)
                used.update(parts)
            elif any(present):
                missing = [p for p, ok in zip(parts, present) if not ok]
                raise CheckpointError(f"{source}: {_sample([det.prefix + m for m in missing])} missing (q/k/v must come together)")
    if det.proj_key is not None:
        out["proj"] = state[det.proj_key].t().contiguous()
    unknown = [k for k in tower if k not in used and not _HF_IGNORED.match(k)]
    if unknown:
        raise CheckpointError(
            f"{source}: Hugging Face vision keys with no open_clip counterpart: {_sample(det.prefix + k for k in unknown)}"
        )
    return out


def open_clip_to_hf(
    state: Mapping[str, Tensor], *, prefix: str = HF_PREFIX, source: str = "state dict"
) -> dict[str, Tensor]:
    """Convert an open_clip ViT tower (any recognised prefix) to the HF layout.

    Keys get ``prefix`` (``"vision_model."``, as in ``CLIPVisionModelWithProjection`` and
    ``CLIPModel``; pass ``""`` for a transformers>=5 bare ``CLIPVisionModel``); ``proj`` becomes
    the top-level ``visual_projection.weight = proj.T``. Keys that HF's CLIP has no place for
    (attention pooling, layer scale, ...) are refused by name.
    """
    det = detect_layout(state, source=source)
    if det.layout != "open_clip":
        raise CheckpointError(f"{source}: expected the open_clip layout, found Hugging Face keys")
    tower = _tower(state, det)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for oc, hf in _TOP_RENAMES.items():
        if oc in tower:
            out[prefix + hf] = tower[oc]
            used.add(oc)
    for i in range(_num_blocks(tower, _OC_BLOCK_RE)):
        op, hp = f"transformer.resblocks.{i}.", f"{prefix}encoder.layers.{i}."
        for oc, hf in _BLOCK_RENAMES.items():
            if op + oc in tower:
                out[hp + hf] = tower[op + oc]
                used.add(op + oc)
        for kind in ("weight", "bias"):
            key = op + f"attn.in_proj_{kind}"
            if key not in tower:
                continue
            packed = tower[key]
            if packed.shape[0] % 3:
                raise CheckpointError(f"{source}: {det.prefix + key} has {packed.shape[0]} rows, not 3 x width")
            for name, part in zip("qkv", packed.chunk(3, dim=0)):
                out[hp + f"self_attn.{name}_proj.{kind}"] = part.contiguous()
            used.add(key)
    if "proj" in tower:
        out[_HF_PROJ] = tower["proj"].t().contiguous()
        used.add("proj")
    unknown = [k for k in tower if k not in used]
    if unknown:
        raise CheckpointError(
            f"{source}: open_clip keys with no place in Hugging Face's CLIP vision model: "
            f"{_sample(det.prefix + k for k in unknown)}"
        )
    return out


def to_open_clip(state: Mapping[str, Tensor], *, source: str = "state dict") -> tuple[dict[str, Tensor], Layout]:
    """The open_clip tower of ``state`` whatever its layout, and the layout it came in.

    An open_clip state has its prefix (``visual.``, ``module.visual.``, ...) removed and keys
    outside the tower (a text tower) dropped; a HF state is converted.
    """
    det = detect_layout(state, source=source)
    if det.layout == "hf":
        return hf_to_open_clip(state, source=source), "hf"
    return _tower(state, det), "open_clip"
