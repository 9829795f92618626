"""Layer-wise AdaMerging (Yang et al., "AdaMerging: Adaptive Model Merging for Multi-Task
Learning", ICLR 2024): learn one coefficient per task and layer by minimising the entropy of the
merged model's predictions on unlabeled test images.

    θ_l = θ0_l + Σ_t λ_{t,l} · τ_{t,l}        λ initialised to ``init``, clamped to [0, 1]
    loss = Σ_tasks mean_batch H(softmax(head_t(f(x; θ))))

"Layer" is one floating-point entry of the encoder's state dict, as in the reference
implementation. The merged model is a functional call of the encoder on θ(λ)
(``torch.func.functional_call``), so only λ (T × L numbers) is trained, by a Lightning
``Trainer``. ``pact+adamerging`` runs the same on PACT-cleaned task vectors.

Data use: AdaMerging reads the test images of every task, never their labels; the stage records
that in each entry (``data_use``), and the report states it.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.func import functional_call

from pactmerge.errors import ConfigError
from pactmerge.pipeline.config import AdaMergingConfig
from pactmerge.pipeline.heads import head_logits

log = logging.getLogger(__name__)

DATA_USE = "unlabeled test images of every task (no labels)"


def entropy(logits: Tensor) -> Tensor:
    """Mean Shannon entropy (nats) of softmax(logits) over the batch."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


class AdaMergingModule(pl.LightningModule):
    """λ (T × L) as the only trained parameter; the encoder, θ0, task vectors and heads stay fixed.

    ``task_vectors``: T mappings key -> τ_t over the same floating-point keys of ``pretrained``;
    ``tasks``: the task of each head (the batches are ``{task: {"images": ...}}``).
    """

    def __init__(self, encoder: nn.Module, pretrained: Mapping[str, Tensor], task_vectors: Sequence[Mapping[str, Tensor]],
                 heads: Mapping[str, Tensor], logit_scale: float, params: AdaMergingConfig = AdaMergingConfig(),
                 transforms: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not task_vectors:
            raise ConfigError("AdaMerging needs at least one task vector")
        self.encoder = encoder.eval().requires_grad_(False)
        self.params_ = params
        self.keys = [k for k, v in pretrained.items() if v.is_floating_point() and k in task_vectors[0]]
        self.theta0 = {k: v.detach() for k, v in pretrained.items()}  # input dtypes kept
        self._taus = [{k: tv[k].detach().float() for k in self.keys} for tv in task_vectors]
        self.heads = {t: h.detach().float() for t, h in heads.items()}
        self.logit_scale = float(logit_scale)
        self.transforms = dict(transforms or {})
        self.lambdas = nn.Parameter(torch.full((len(task_vectors), len(self.keys)), float(params.init)))

    def train(self, mode: bool = True) -> "AdaMergingModule":
        super().train(mode)
        self.encoder.eval()  # BatchNorm statistics stay those of the merged weights
        return self

    def merged_state(self, lambdas: Tensor | None = None) -> dict[str, Tensor]:
        """θ(λ): θ0 + Σ_t λ_{t,l} τ_{t,l} for each merged key l, θ0 for the others (differentiable in λ)."""
        lam = self.lambdas if lambdas is None else lambdas
        out = dict(self.theta0)
        for j, k in enumerate(self.keys):
            acc = self.theta0[k].to(lam.device, torch.float32)
            for t, tv in enumerate(self._taus):
                acc = acc + lam[t, j] * tv[k].to(lam.device)
            out[k] = acc
        return out

    def training_step(self, batch: Mapping[str, Mapping[str, Tensor]], batch_idx: int) -> Tensor:
        state = self.merged_state()
        loss = torch.zeros((), device=self.lambdas.device)
        for task, b in batch.items():
            transform = self.transforms.get(task)
            if transform is not None:
                b = transform(b, train=False)
            feats = functional_call(self.encoder, state, (b["images"],))
            loss = loss + entropy(head_logits(feats.float(), self.heads[task].to(feats.device), self.logit_scale))
        self.log("train/entropy", loss.detach(), prog_bar=True)
        return loss

    def on_train_batch_end(self, *args: Any) -> None:
        with torch.no_grad():
            self.lambdas.clamp_(0.0, 1.0)

    def configure_optimizers(self):
        return torch.optim.Adam([self.lambdas], lr=self.params_.lr, betas=(0.9, 0.999))

    def final_state(self) -> dict[str, Tensor]:
        """The merged weights at the learned λ, detached, in θ0's dtypes (integer buffers from θ0)."""
        with torch.no_grad():
            merged = self.merged_state(self.lambdas.detach().cpu())
        return {k: merged[k].to(self.theta0[k].dtype) if k in self.keys else v for k, v in merged.items()}


class _Cycle(torch.utils.data.IterableDataset):
    """An endless round-robin of batches, one batch of each task per step, from re-iterated loaders."""

    def __init__(self, loaders: Mapping[str, Any]) -> None:
        self.loaders = dict(loaders)

    def __iter__(self):
        its = {t: iter(dl) for t, dl in self.loaders.items()}
        while True:
            batch = {}
            for t, dl in self.loaders.items():
                try:
                    b = next(its[t])
                except StopIteration:
                    its[t] = iter(dl)
                    b = next(its[t])
                batch[t] = {"images": b["images"]}
            yield batch


def unlabeled_loaders(datamodules: Mapping[str, Any], batch_size: int, seed: int) -> dict[str, Any]:
    """Per task, a shuffled loader of the test split's images (labels dropped at use)."""
    out = {}
    for i, (task, dm) in enumerate(datamodules.items()):
        test = dm.test_dataloader()
        g = torch.Generator().manual_seed(seed * 1000 + i)
        out[task] = torch.utils.data.DataLoader(test.dataset, batch_size=batch_size, shuffle=True, generator=g,
                                                collate_fn=test.collate_fn, num_workers=0)
    return out


def adamerge(encoder: nn.Module, pretrained: Mapping[str, Tensor], task_vectors: Sequence[Mapping[str, Tensor]],
             heads: Mapping[str, Tensor], datamodules: Mapping[str, Any], *, logit_scale: float,
             params: AdaMergingConfig = AdaMergingConfig(), seed: int = 0,
             trainer_kwargs: Mapping[str, Any] | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Learn λ with a Lightning ``Trainer`` on the tasks' unlabeled test images; return the merged
    state and a record (λ per task and key, first and last entropy, data use)."""
    tasks = list(datamodules)
    module = AdaMergingModule(encoder, pretrained, task_vectors, {t: heads[t] for t in tasks}, logit_scale, params,
                              transforms={t: dm.gpu_transform for t, dm in datamodules.items()})
    pl.seed_everything(seed, workers=True, verbose=False)
    loader = torch.utils.data.DataLoader(_Cycle(unlabeled_loaders(datamodules, params.batch_size, seed)),
                                         batch_size=None)
    kw = {"accelerator": "cpu", "devices": 1, "max_steps": params.steps, "max_epochs": -1, "logger": False,
          "enable_checkpointing": False, "enable_model_summary": False, "enable_progress_bar": False,
          "deterministic": True, "num_sanity_val_steps": 0, "limit_val_batches": 0}
    kw.update(trainer_kwargs or {})
    history: list[float] = []

    class _Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            history.append(float(outputs["loss"]) if isinstance(outputs, Mapping) else float(outputs))

    trainer = pl.Trainer(callbacks=[_Record()], **kw)
    with warnings.catch_warnings():  # the frozen encoder is in eval mode on purpose
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        trainer.fit(module, train_dataloaders=loader)
    lam = module.lambdas.detach().cpu()
    record = {
        "method": "adamerging", "data_use": DATA_USE, "params": {k: v for k, v in dataclasses.asdict(params).items() if k != "variants"},
        "seed": seed, "tasks": tasks,
        "lambda_mean": {t: float(lam[i].mean()) for i, t in enumerate(tasks)},
        "entropy_first": history[0] if history else None, "entropy_last": history[-1] if history else None,
        "steps": trainer.global_step,
    }
    return module.final_state(), record


# -- the study stage ---------------------------------------------------------------------------
def _pact_vectors(pre: Mapping[str, Tensor], vectors: Sequence[Mapping[str, Tensor]], merge_cfg: Any, variant: str,
                  task_ids: Sequence[str]) -> tuple[list[Mapping[str, Tensor]], dict[str, Any]]:
    """The task vectors cleaned by PACT with ``merge.pact_params`` and the merge-wide SVD options of
    ``merge.params``, as a ``pact+`` merge of the study cleans them; and the resolved PACT parameters."""
    from pactmerge.merging import KeyPolicy, clean_task_vectors, get_method
    from pactmerge.merging.params import svd_options
    from pactmerge.merging.registry import resolve_params

    svd = {k: v for k, v in dict(merge_cfg.params or {}).items() if k in ("oversample", "power_iters", "seed")}
    mparams, pact_cfg, _, pact_resolved = resolve_params(get_method("pact+task_arithmetic"), {**svd, "svd": variant},
                                                         dict(merge_cfg.pact_params or {}))
    cleaned, _ = clean_task_vectors(pre, vectors, pact_cfg, key_policy=KeyPolicy(conv_as_matrix=merge_cfg.conv_as_matrix),
                                    svd=svd_options(mparams), task_ids=task_ids)
    return cleaned, pact_resolved


def run_adamerging(ctx: Any, only: Sequence[str] | None = None) -> bool:
    """Build each configured AdaMerging variant of the study's fine-tunes into ``merged/<id>`` (idempotent;
    ``only``: just the variants with these ids, as ``pactmerge merge --only`` and its workers ask).

    The PACT variants clean the task vectors with ``merge.pact_params`` (exact or randomized SVDs,
    seeded by each fine-tune's sha256) before λ is learned. The entries carry ``alpha = 1`` (λ
    already scales each task vector), the learned λ summary and the data the method saw."""
    import copy
    import time

    from pactmerge.errors import StageError
    from pactmerge.merging import TaskVector
    from pactmerge.pipeline.merge_plan import ADAMERGING_IDS as _IDS

    m = ctx.cfg.merge
    todo = [v for v in m.adamerging.variants
            if (only is None or _IDS[v] in only) and not ctx.store.has(f"merged/{_IDS[v]}")]
    if not todo:
        return False
    store, tasks = ctx.store, ctx.task_keys
    missing = [t for t in tasks if not store.has(f"finetuned/{t}")]
    if missing:
        raise StageError(f"AdaMerging needs the fine-tunes of {', '.join(missing)}; run `pactmerge finetune CONFIG` "
                         "(or `pactmerge run CONFIG`) first")
    pre = store.load_state("pretrained")
    fts = [store.load_state(f"finetuned/{t}") for t in tasks]
    ids = [store.entry(f"finetuned/{t}")["sha256"] for t in tasks]
    plain = [TaskVector.from_state_dicts(pre, ft, name=f"finetuned/{t}") for t, ft in zip(tasks, fts)]
    loaded = ctx.loaded
    for variant in todo:
        started = time.perf_counter()
        pact_params = None
        if variant == "none":
            vectors = plain
        else:
            vectors, pact_params = _pact_vectors(pre, plain, m, variant, ids)
        state, record = adamerge(copy.deepcopy(loaded.encoder), pre, vectors, ctx.heads(), ctx.datamodules(tasks),
                                 logit_scale=loaded.logit_scale, params=m.adamerging, seed=ctx.cfg.seed,
                                 trainer_kwargs={"accelerator": ctx.trainer_kwargs()["accelerator"]})
        mid = _IDS[variant]
        meta = {"kind": "merged", "method": mid.removesuffix("-rsvd"), "params": record["params"],
                "pact_params": pact_params, "alpha": 1.0, "data_use": DATA_USE, "adamerging": record,
                "timings": {"adamerging_s": round(time.perf_counter() - started, 3)}}
        store.save_state(f"merged/{mid}", state, meta)
        log.info("merged %s: λ learned in %d steps (entropy %.3f -> %.3f), %.1f s", mid, record["steps"],
                 record["entropy_first"] or float("nan"), record["entropy_last"] or float("nan"),
                 time.perf_counter() - started)
    return True
