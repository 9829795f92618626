"""``CLIPFineTuner``: the LightningModule that fine-tunes a CLIP image encoder behind frozen heads."""

from __future__ import annotations

import math
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from pactmerge.errors import ConfigError, PactmergeError
from pactmerge.pipeline.heads import head_logits
from pactmerge.pipeline.recipe import Recipe  # noqa: F401  (its home before pipeline.recipe)


class NonFiniteLossError(PactmergeError):
    """The training loss became NaN or infinite; the run stopped before applying that update."""


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class CLIPFineTuner(pl.LightningModule):
    """Fine-tune ``encoder`` for one task or several jointly, each batch through its task's head.

    Batches are dicts ``{"images": (B, 3, H, W) float, "labels": (B,) long, "task": str}``;
    ``heads`` maps task keys to frozen ``(C, D)`` heads (buffers, never trained). Logged keys:
    ``train/loss`` (per step), ``val/loss``, ``<task>/acc`` (validation accuracy per task),
    ``val/acc`` (their mean), and on ``Trainer.test`` ``test/<task>/acc`` and ``test/acc``.
    Accuracies are torchmetrics states, reduced across processes under DDP.

    BatchNorm: with ``recipe.bn_mode="frozen"`` (the default) every BatchNorm layer of the
    encoder stays in eval mode during training, so normalisation uses the pre-trained running
    statistics and those buffers are bitwise unchanged after fine-tuning; the affine weight
    and bias still train and enter the task vector like any other parameter. Letting the
    statistics update (``"train"``) would put a shift of the running mean/variance, driven by
    batch composition rather than gradients, into the task vector, and merging methods would
    treat it as a learned update. Encoders without BatchNorm (ViTs) are unaffected.

    A NaN or infinite loss raises ``NonFiniteLossError`` naming the step, before the update is
    applied, so checkpoints written earlier stay the last good ones.
    """

    def __init__(self, encoder: nn.Module, heads: Mapping[str, torch.Tensor], logit_scale: float,
                 recipe: Recipe | None = None) -> None:
        super().__init__()
        if not heads:
            raise ConfigError("CLIPFineTuner needs at least one task head")
        self.encoder = encoder
        self.recipe = recipe or Recipe()
        self.logit_scale = float(logit_scale)
        self.tasks = list(heads)
        for task, head in heads.items():
            if "." in task or not task:
                raise ConfigError(f"task key {task!r}: must be non-empty and contain no '.'")
            self.register_buffer(f"head_{task}", head.detach().float().clone())
        self.val_acc = nn.ModuleDict({t: MulticlassAccuracy(len(h), average="micro") for t, h in heads.items()})
        self.test_acc = nn.ModuleDict({t: MulticlassAccuracy(len(h), average="micro") for t, h in heads.items()})
        self.val_loss = MeanMetric()
        self._compiled = False
        self.train()  # Lightning keeps the modes it finds; a loaded CLIP arrives in eval mode

    # -- model -----------------------------------------------------------------------------
    def head(self, task: str) -> torch.Tensor:
        if task not in self.tasks:
            raise ConfigError(f"batch of task {task!r} but the fine-tuner has heads for {self.tasks}")
        return getattr(self, f"head_{task}")

    def forward(self, images: torch.Tensor, task: str) -> torch.Tensor:
        """``(B, 3, H, W)`` images of ``task`` -> ``(B, C)`` logits."""
        return head_logits(self.encoder(images), self.head(task), self.logit_scale)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's state dict (CPU clones, same keys as ``encoder.state_dict()``)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.encoder.state_dict().items()}

    def train(self, mode: bool = True) -> "CLIPFineTuner":
        super().train(mode)
        if mode and self.recipe.bn_mode == "frozen":
            for m in self.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def configure_model(self) -> None:
        # called before the module is moved: ask the strategy where it will run
        device = self.trainer.strategy.root_device.type if self._trainer is not None else self.device.type
        if not self._compiled and self.recipe.resolved_compile(device):
            self.encoder.compile()  # in place: state-dict keys keep their names
            self._compiled = True

    def teardown(self, stage: str) -> None:
        """After a fit, free what only training needs: the gradients and the optimizer state
        (about 3x the encoder's size; Lightning has written its checkpoints by then). A data
        module keeps a reference to its last trainer, and so to this module, after ``fit``
        returns; without this a study holding a data module per task would keep every fit's
        optimizer alive (gigabytes for a ViT-B/32)."""
        if stage == "fit" and self._trainer is not None:
            for opt in self.trainer.optimizers:
                opt.state.clear()
            self.encoder.zero_grad(set_to_none=True)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        # the fused kernel: one pass per parameter instead of about ten elementwise ops, on the
        # CPU too (about 4x faster steps of the optimizer there; deterministic). Lightning's
        # mixed-precision plugins refuse gradient clipping with a fused optimizer, so a mixed
        # recipe that clips keeps the plain one.
        mixed_clip = "mixed" in str(self.recipe.precision) and bool(self.recipe.grad_clip)
        opt = torch.optim.AdamW(params, lr=self.recipe.lr, weight_decay=self.recipe.weight_decay,
                                fused=self.device.type in ("cuda", "cpu") and not mixed_clip)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, self.recipe.warmup_steps, self.recipe.max_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- steps -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch["images"], batch["task"])
        loss = F.cross_entropy(logits.float(), batch["labels"])
        self._check_finite(loss, batch["task"])
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=len(logits))
        return loss

    def _check_finite(self, loss: torch.Tensor, task: str) -> None:
        finite = bool(torch.isfinite(loss.detach()))
        if self.trainer.world_size > 1:  # every rank must stop together or DDP hangs
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            step = self.global_step
            raise NonFiniteLossError(
                f"training loss is not finite at step {step} (task {task!r}; {step} optimizer steps had completed). "
                "The run stopped before applying this update; the last good Lightning checkpoint is kept. "
                "Lower recipe.lr or check the input data, then rerun to resume from that checkpoint.")

    def _eval_step(self, batch: dict[str, Any], metrics: nn.ModuleDict, prefix: str) -> None:
        logits = self(batch["images"], batch["task"])
        metrics[batch["task"]].update(logits.float(), batch["labels"])
        if prefix == "val":
            self.val_loss.update(F.cross_entropy(logits.float(), batch["labels"]), weight=len(logits))

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, self.val_acc, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, self.test_acc, "test")

    def _log_accuracies(self, metrics: nn.ModuleDict, fmt: str, mean_key: str) -> None:
        accs = []
        for task, metric in metrics.items():
            if not metric.update_called:
                continue
            acc = metric.compute()  # synchronised across processes by torchmetrics
            metric.reset()
            accs.append(acc)
            self.log(fmt.format(task=task), acc, prog_bar=len(metrics) == 1)
        if accs:
            self.log(mean_key, torch.stack(accs).mean(), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.val_loss.update_called:
            self.log("val/loss", self.val_loss.compute())
            self.val_loss.reset()
        self._log_accuracies(self.val_acc, "{task}/acc", "val/acc")

    def on_test_epoch_end(self) -> None:
        self._log_accuracies(self.test_acc, "test/{task}/acc", "test/acc")
