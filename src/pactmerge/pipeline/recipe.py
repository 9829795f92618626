"""``Recipe``: the fine-tuning hyper-parameters, a section of the run config (torch-free)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pactmerge.errors import ConfigError


@dataclass
class Recipe:
    """Fine-tuning hyper-parameters; the defaults are the standard task_vectors recipe.

    ``batch_size`` is the per-step batch the data module should be built with (the recipe
    does not build loaders). ``precision="auto"`` means bf16-mixed on CUDA, 32-true elsewhere;
    ``compile="auto"`` compiles the encoder with ``torch.compile`` on CUDA only.
    ``bn_mode``: ``"frozen"`` keeps BatchNorm running statistics at their pre-trained values
    (affine weights still train), ``"train"`` lets them update (see ``CLIPFineTuner``).
    ``val_check_interval`` / ``limit_val_batches`` go to the Trainer (``None``: validate at
    epoch ends only); ``final_validation`` validates once more after the last step.
    """

    lr: float = 1e-5
    weight_decay: float = 0.1
    batch_size: int = 128
    warmup_steps: int = 500
    max_steps: int = 2000
    grad_clip: float = 1.0
    precision: str = "auto"
    compile: bool | str = "auto"
    seed: int = 0
    bn_mode: str = "frozen"
    val_check_interval: int | float | None = None
    limit_val_batches: int | float = 1.0
    final_validation: bool = True
    ckpt_every_n_steps: int = 500
    log_every_n_steps: int = 50

    def __post_init__(self) -> None:
        if self.bn_mode not in ("frozen", "train"):
            raise ConfigError(f"recipe.bn_mode={self.bn_mode!r}: use 'frozen' or 'train'")
        if self.compile not in (True, False, "auto"):
            raise ConfigError(f"recipe.compile={self.compile!r}: use true, false or 'auto'")
        if self.max_steps < 1 or self.warmup_steps < 0 or self.lr <= 0:
            raise ConfigError("recipe: max_steps must be >= 1, warmup_steps >= 0 and lr > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_precision(self, accelerator: str) -> str:
        if self.precision != "auto":
            return self.precision
        return "bf16-mixed" if accelerator == "cuda" else "32-true"

    def resolved_compile(self, accelerator: str) -> bool:
        return accelerator == "cuda" if self.compile == "auto" else bool(self.compile)
