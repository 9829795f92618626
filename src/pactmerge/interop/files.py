"""Read an image encoder from a file in any supported layout, and compare encoders key by key."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch

from pactmerge.errors import CheckpointError
from pactmerge.interop.layout import detect_layout, to_open_clip
from pactmerge.merging.keys import normalize_keys
from pactmerge.merging.sources import layout_differences as describe_differences  # noqa: F401 (interop.importer)

log = logging.getLogger(__name__)
Tensor = torch.Tensor


def encoder_state(state: Mapping[str, Tensor], *, source: str = "state dict") -> tuple[dict[str, Tensor], str]:
    """The image-encoder state of ``state`` in pactmerge's layout, and the layout it came in.

    A CLIP ViT (open_clip or Hugging Face layout, whole model or tower) gives its open_clip
    tower (``"open_clip"`` / ``"hf"``). Any other state (e.g. a CNN tower) is kept as it is,
    with a ``module.`` prefix removed and, for a whole open_clip CLIP, only its ``visual.*``
    keys (``"other"``).
    """
    state = normalize_keys(state)
    try:
        detect_layout(state, source=source)
    except CheckpointError:
        return normalize_keys(state, tower=True), "other"
    return to_open_clip(state, source=source)


def load_encoder_file(path: str | Path, *, trust_pickle: bool = False,
                      legacy_pickle: bool = False) -> tuple[dict[str, Tensor], str]:
    """``encoder_state`` of the state dict in ``path`` (safetensors or torch file, or a Hugging
    Face checkpoint directory holding ``model.safetensors`` / ``pytorch_model.bin``). With
    ``legacy_pickle`` a ``torch.save(model)`` pickle is read without running its code
    (``interop.legacy``); without it such a file is refused with an error saying so."""
    from pactmerge.interop.legacy.loader import read_state_file

    path = weights_file(path)
    state = read_state_file(path, trust_pickle=trust_pickle, legacy_pickle=legacy_pickle)
    return encoder_state(state, source=str(path))


def load_clip_file(path: str | Path, *, trust_pickle: bool = False,
                   legacy_pickle: bool = False) -> tuple[dict[str, Tensor], str]:
    """A whole CLIP model's state in open_clip's ``CLIP`` layout, and the layout it came in.

    The image tower's keys get ``visual.``; a Hugging Face ``CLIPModel`` also gives its text
    tower (``interop.text``) and ``logit_scale``; an open_clip ``CLIP`` state keeps its text keys;
    a bare tower, a ``CLIPVisionModel`` or a legacy pickle give the image tower alone. A state
    that is no CLIP ViT (e.g. a CNN tower) is returned as it is (``"other"``)."""
    from pactmerge.interop.legacy.loader import read_state_file
    from pactmerge.interop.text import hf_text_prefix, hf_text_to_open_clip

    file = weights_file(path)
    raw = normalize_keys(read_state_file(file, trust_pickle=trust_pickle, legacy_pickle=legacy_pickle))
    try:
        det = detect_layout(raw, source=str(file))
    except CheckpointError:
        return raw, "other"
    if det.layout == "hf":
        out = {f"visual.{k}": v for k, v in to_open_clip(raw, source=str(file))[0].items()}
        if hf_text_prefix(raw) is not None:
            out.update(hf_text_to_open_clip(raw, source=str(file)))
        return out, "hf"
    # the CLIP model holding the tower: "visual." of a whole CLIP, "model.visual." of an ImageEncoder state
    outer = det.prefix.removesuffix("visual.") if det.prefix.endswith("visual.") else None
    if outer is None:
        return {f"visual.{k}": v for k, v in to_open_clip(raw, source=str(file))[0].items()}, "open_clip"
    return {k[len(outer):]: v for k, v in raw.items() if k.startswith(outer)}, "open_clip"


def weights_file(path: str | Path) -> Path:
    """``path`` itself, or the weights file inside a checkpoint directory."""
    path = Path(path)
    return _weights_in_dir(path) if path.is_dir() else path


def _weights_in_dir(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    shards = sorted(directory.glob("*.safetensors.index.json"))
    hint = " (sharded checkpoints are not supported: save the encoder as one file)" if shards else ""
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin in this directory{hint}")
