"""Interoperability with the public CLIP checkpoint layouts: open_clip <-> Hugging Face
conversion (pure tensors), import of fine-tuned checkpoints into a store, and export."""

from pactmerge.interop.geometry import VisionGeometry, hf_vision_config
from pactmerge.interop.layout import DetectedLayout, detect_layout, hf_to_open_clip, open_clip_to_hf, to_open_clip

__all__ = [
    "DetectedLayout",
    "VisionGeometry",
    "detect_layout",
    "hf_to_open_clip",
    "hf_vision_config",
    "open_clip_to_hf",
    "to_open_clip",
]
