"""``MergeCallback``: merge the model a Trainer just fine-tuned with other fine-tunes of the same
pre-trained model, and install the merged weights when training ends.

Shaped like Lightning's ``WeightAveraging``: drop it into any ``Trainer``::

    from pactmerge.callbacks import MergeCallback

    cb = MergeCallback(finetuned=["cars.safetensors", "dtd.safetensors"],  # fine-tunes of the same model
                       method="ties", pact={"K": 15, "k": 8}, alpha=0.5)
    trainer = pl.Trainer(max_steps=2000, callbacks=[cb])
    trainer.fit(model, datamodule)          # model now holds the merged multi-task weights
    cb.result.diagnostics                   # the MergeResult of the merge

``setup`` snapshots the module's weights when a fit starts: those are the pre-trained weights
θ0 the task vectors are taken against. ``on_train_end`` merges the just-trained weights and the
given fine-tunes with ``pactmerge.merging.merge`` and loads θ0 + α·τ* into the module. The
snapshot is part of the callback's ``state_dict``, so a fit resumed from a Lightning checkpoint
merges against the weights the first fit started from, not the half-trained ones it resumes.

``attr`` names the sub-module whose weights are merged (e.g. ``"encoder"``); by default the
whole module. ``method`` is any registered name (``ties``, ``tsvm``, ``pact+iso_c`` ...), or a
plain name with ``pact=...`` which selects its ``pact+`` form. Only global rank zero computes
the merge; every rank installs the same result (broadcast by the Trainer's strategy).

Depends only on ``pactmerge.merging`` and ``pactmerge.fileio``: it knows nothing of studies or run
directories (the study's α search is a stage of its own, ``pactmerge.pipeline.merge_stage``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from pactmerge.errors import ConfigError
from pactmerge.fileio import load_state_dict, sha256_file
from pactmerge.merging import MergeResult, merge

log = logging.getLogger(__name__)

def _target(pl_module: nn.Module, attr: str | None) -> nn.Module:
    if not attr:
        return pl_module
    module: Any = pl_module
    for part in attr.split("."):
        if not hasattr(module, part):
            raise ConfigError(f"MergeCallback(attr={attr!r}): {type(pl_module).__name__} has no attribute {part!r}")
        module = getattr(module, part)
    if not isinstance(module, nn.Module):
        raise ConfigError(f"MergeCallback(attr={attr!r}) is a {type(module).__name__}, not a torch module")
    return module


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class MergeCallback(pl.Callback):
    """Merge the fine-tune a fit produces with ``finetuned`` when training ends.

    Args:
        finetuned: other fine-tunes of the same pre-trained weights: safetensors (or torch
            ``weights_only``) file paths, or state dicts with the module's keys.
        method: a merge method's name (``pactmerge.merging.available_methods()``).
        params: the method's parameters (and SVD options), as for ``merging.merge``.
        pact: PACT's parameters; given with a plain ``method``, it selects ``pact+<method>``.
        alpha: the scaling coefficient α of θ0 + α·τ*; None takes the method's default.
        attr: the dotted name of the sub-module to merge (None: the whole LightningModule).
        device: where the merge computes (``"auto"``, ``"cpu"``, ``"cuda"``).
    """

    def __init__(self, finetuned: Sequence[Any], method: str = "ties", params: Mapping[str, Any] | None = None,
                 pact: Mapping[str, Any] | None = None, alpha: float | None = None, attr: str | None = None,
                 device: str = "auto") -> None:
        if not finetuned:
            raise ConfigError("MergeCallback(finetuned=...): give at least one other fine-tune to merge with")
        if pact is not None and not method.startswith("pact+"):
            method = f"pact+{method}"
        self.finetuned = list(finetuned)
        self.method, self.params, self.pact = method, dict(params or {}), (dict(pact) if pact is not None else None)
        self.alpha, self.attr, self.device = alpha, attr, device
        self._pretrained: dict[str, Tensor] | None = None
        self.result: MergeResult | None = None

    # -- the snapshot -------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._pretrained is None:
            self._pretrained = _cpu_state(_target(pl_module, self.attr))

    def state_dict(self) -> dict[str, Any]:
        return {"pretrained": self._pretrained}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("pretrained") is not None:
            self._pretrained = dict(state_dict["pretrained"])

    @property
    def pretrained(self) -> dict[str, Tensor] | None:
        """The weights the fit started from (θ0), or None before the fit."""
        return self._pretrained

    # -- the merge ----------------------------------------------------------------------------
    def _load_finetuned(self) -> tuple[list[Mapping[str, Tensor]], list[str] | None]:
        states, ids = [], []
        for i, src in enumerate(self.finetuned):
            if isinstance(src, Mapping):
                states.append(src)
                ids.append(None)
            elif isinstance(src, (str, os.PathLike)):
                states.append(load_state_dict(src))
                ids.append(sha256_file(src))
            else:
                raise ConfigError(f"MergeCallback(finetuned[{i}]): a path or a state dict, not {type(src).__name__}")
        return states, (None if None in ids else ids)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pretrained is None:
            raise ConfigError("MergeCallback: no pre-trained snapshot (the callback was not set up by a fit)")
        target = _target(pl_module, self.attr)
        merged: dict[str, Tensor] | None = None
        if trainer.is_global_zero:
            trained = _cpu_state(target)
            others, ids = self._load_finetuned()
            task_ids = None if ids is None else ["trained", *ids]
            self.result = merge(self._pretrained, [trained, *others], self.method, params=self.params,
                                pact=self.pact, device=self.device, task_ids=task_ids)
            merged = self.result.apply(self._pretrained, self.alpha)
            log.info("merge callback: %s of %d models installed (alpha %s)", self.method, 1 + len(others),
                     self.result.default_alpha if self.alpha is None else self.alpha)
        if trainer.world_size > 1:
            merged = trainer.strategy.broadcast(merged, src=0)
        with torch.no_grad():
            target.load_state_dict(merged)
