"""Import public fine-tuned CLIP image encoders (open_clip or Hugging Face layout) into a store.

A source is a local file, a local Hugging Face checkpoint directory, or a Hub model id
(``owner/name``) fetched with ``huggingface_hub`` when there is a network (or found in its
local cache). Each encoder is converted to the open_clip layout and must have exactly the
pre-trained encoder's keys and shapes. One exception: a plain HF ``CLIPVisionModel`` (the
public merging benchmark's per-task checkpoints) carries no ``visual_projection``; its
projection was not fine-tuned, so ``proj`` is taken from the pre-trained encoder (the task
vector is zero there) and the import records it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from pactmerge.errors import CheckpointError
from pactmerge.interop.files import describe_differences, load_encoder_file
from pactmerge.interop.geometry import VisionGeometry
from pactmerge.interop.layout import detect_layout

log = logging.getLogger(__name__)
Tensor = torch.Tensor

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# keys a HF vision checkpoint may lack because they were never fine-tuned
_FILLABLE_FROM_HF = ("proj",)


def resolve_source(source: str, *, cache_dir: str | None = None) -> Path:
    """A local path for ``source``: the path itself when it exists, else a Hub snapshot of a model id.

    Raises ``CheckpointError`` for a path that does not exist and is no model id, and for a
    model id that cannot be fetched (offline, private, misspelt), saying how to get the files.
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not _HUB_ID.match(source):
        raise CheckpointError(f"{source}: no such file or directory (nor a Hugging Face model id 'owner/name')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise CheckpointError(
            f"{source}: not a local path; fetching it from the Hugging Face Hub needs huggingface_hub "
            "(pip install huggingface_hub), or download it elsewhere and pass the local directory"
        ) from exc
    try:
        local = snapshot_download(
            repo_id=source,
            allow_patterns=["*.safetensors", "pytorch_model.bin", "*.json"],
            cache_dir=cache_dir,
        )
    except Exception as exc:  # offline mode, connection errors, unknown repos: all mean "not here"
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = "the Hub is disabled (HF_HUB_OFFLINE is set) and it is not in the local cache" if offline else str(exc)
        raise CheckpointError(
            f"{source}: cannot fetch this Hugging Face model ({why}). On a machine with a network run "
            f"`huggingface-cli download {source} --local-dir DIR` and pass DIR instead"
        ) from exc
    return Path(local)


def conform(
    state: dict[str, Tensor],
    layout: str,
    pretrained: Mapping[str, Tensor],
    *,
    name: str,
) -> tuple[dict[str, Tensor], list[str]]:
    """Check ``state`` against the pre-trained encoder; return it (with fillable keys filled) and the filled keys.

    Raises ``CheckpointError`` naming the architecture difference (sizes of both ViTs when both
    are ViTs) and the differing keys.
    """
    filled: list[str] = []
    if layout == "other" and _is_vit(pretrained):
        detect_layout(state, source=name)  # raises, naming the keys it found instead
    if layout == "hf":
        for key in _FILLABLE_FROM_HF:
            if key not in state and key in pretrained:
                state[key] = pretrained[key].clone()
                filled.append(key)
    parts = describe_differences(pretrained, state)
    if not parts:
        return state, filled
    arch = ""
    try:
        mine = VisionGeometry.from_open_clip_state(state, source=name)
        ref = VisionGeometry.from_open_clip_state(pretrained, source="the pre-trained encoder")
        if mine != ref:
            arch = f" It is a ViT of {_describe(mine)}; the pre-trained model is a ViT of {_describe(ref)}."
    except CheckpointError:
        pass
    raise CheckpointError(
        f"{name} ({layout} layout) does not fit the pre-trained encoder: {'; '.join(parts)}.{arch} "
        "Import checkpoints fine-tuned from the same model (--model / --pretrained / --weights)."
    )


def _is_vit(state: Mapping[str, Tensor]) -> bool:
    try:
        return detect_layout(state).layout == "open_clip"
    except CheckpointError:
        return False


def _describe(g: VisionGeometry) -> str:
    return (f"width {g.width}, {g.layers} layers, patch {g.patch_size}, image size {g.image_size}, "
            f"MLP {g.mlp_width}, output {g.output_dim}")


def load_finetuned(
    source: str, pretrained: Mapping[str, Tensor], *, task: str, trust_pickle: bool = False, cache_dir: str | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load one fine-tuned encoder from ``source`` in the pre-trained encoder's layout.

    Returns ``(state, meta)``: ``meta`` records the source, its layout and the keys filled
    from the pre-trained encoder.
    """
    path = resolve_source(source, cache_dir=cache_dir)
    state, layout = load_encoder_file(path, trust_pickle=trust_pickle)
    state, filled = conform(state, layout, pretrained, name=f"task {task!r} checkpoint {source}")
    if filled:
        log.info("%s: %s not in the checkpoint (not fine-tuned); taken from the pre-trained encoder", source, filled)
    return state, {"source": source, "resolved": str(path), "layout": layout, "filled_from_pretrained": filled}
