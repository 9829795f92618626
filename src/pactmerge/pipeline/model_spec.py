"""``ModelSpec``: which model a study builds and where its weights come from, a section of the run
config (torch-free; ``pipeline.model`` loads it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pactmerge.errors import ConfigError


@dataclass
class ModelSpec:
    """Which model to build and where its weights come from (see ``pactmerge.pipeline.model``)."""

    name: str = "efficientnet_lite0_clip"
    pretrained: str | None = None
    weights: str | None = None
    config: str | None = None
    image_size: int | None = None
    trust_pickle: bool = False
    legacy_pickle: bool = False  # weights may be a torch.save(model) pickle, read without running its code
    heads: Literal["auto", "text", "orthonormal"] = "auto"

    def __post_init__(self) -> None:
        if self.heads not in ("auto", "text", "orthonormal"):
            raise ConfigError(f"model.heads={self.heads!r}: use 'auto', 'text' or 'orthonormal'")
