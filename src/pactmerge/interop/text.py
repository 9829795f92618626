"""The text tower of a Hugging Face ``CLIPModel`` in open_clip's ``CLIP`` layout.

open_clip keeps the text tower at the top level of ``CLIP``: ``token_embedding.weight``,
``positional_embedding``, ``transformer.resblocks.N.*`` (the block names of the image tower,
q, k and v packed in ``in_proj``), ``ln_final``, ``text_projection`` (``(width, embed_dim)``,
applied as ``x @ text_projection``) and ``logit_scale``. Hugging Face keeps it under
``text_model.`` with separate q/k/v projections, ``final_layer_norm`` and a top-level
``text_projection.weight`` of shape ``(embed_dim, width)`` (its transpose). As for the image
tower, tensors are only moved, concatenated and transposed.
"""

from __future__ import annotations

from typing import Mapping

import torch

from pactmerge.errors import CheckpointError
from pactmerge.interop.layout import _BLOCK_RENAMES

Tensor = torch.Tensor
_ANCHOR = "text_model.embeddings.token_embedding.weight"


def hf_text_prefix(state: Mapping[str, Tensor]) -> str | None:
    """The prefix before ``text_model.`` when ``state`` holds a HF CLIP text tower, else None."""
    found = [k[: -len(_ANCHOR)] for k in state if k.endswith(_ANCHOR)]
    return found[0] if len(found) == 1 else None


def hf_text_to_open_clip(state: Mapping[str, Tensor], *, source: str = "state dict") -> dict[str, Tensor]:
    """The open_clip ``CLIP`` text keys (and ``logit_scale``) of a HF ``CLIPModel`` state.

    ``CheckpointError`` when ``state`` has no text tower or a part of it is missing."""
    outer = hf_text_prefix(state)
    if outer is None:
        raise CheckpointError(f"{source}: no Hugging Face CLIP text tower ('text_model.*') in this checkpoint")
    pre = outer + "text_model."

    def take(key: str) -> Tensor:
        if key not in state:
            raise CheckpointError(f"{source}: {key!r} is missing from the text tower")
        return state[key]

    out = {
        "token_embedding.weight": take(pre + "embeddings.token_embedding.weight"),
        "positional_embedding": take(pre + "embeddings.position_embedding.weight"),
        "ln_final.weight": take(pre + "final_layer_norm.weight"),
        "ln_final.bias": take(pre + "final_layer_norm.bias"),
        "text_projection": take(outer + "text_projection.weight").t().contiguous(),
    }
    if outer + "logit_scale" in state:
        out["logit_scale"] = state[outer + "logit_scale"]
    layers = sorted({int(k[len(pre + "encoder.layers."):].split(".")[0]) for k in state
                     if k.startswith(pre + "encoder.layers.")})
    if layers != list(range(len(layers))) or not layers:
        raise CheckpointError(f"{source}: text tower blocks {layers} are not 0..N-1")
    for i in layers:
        hp, op = f"{pre}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for oc, hf in _BLOCK_RENAMES.items():
            out[op + oc] = take(hp + hf)
        for kind in ("weight", "bias"):
            out[op + f"attn.in_proj_{kind}"] = torch.cat([take(hp + f"self_attn.{p}_proj.{kind}") for p in "qkv"])
    return out
