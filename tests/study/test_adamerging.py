"""Layer-wise AdaMerging: θ(λ) is task arithmetic with per-layer coefficients, λ stays in [0, 1],
the learned λ lowers the prediction entropy on the unlabeled images it sees, and the study stage
builds ``adamerging`` and ``pact+adamerging`` entries that record the data they used."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pactmerge.errors import ConfigError
from pactmerge.pipeline.adamerging import AdaMergingModule, entropy
from pactmerge.pipeline.config import AdaMergingConfig, load_config


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 4))


def _vectors(enc: nn.Module, n: int, scale: float = 0.3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [{k: scale * torch.randn(v.shape, generator=g) for k, v in enc.state_dict().items()} for _ in range(n)]


def test_merged_state_is_task_arithmetic_per_layer():
    enc = _encoder()
    pre = {k: v.clone() for k, v in enc.state_dict().items()}
    taus = _vectors(enc, 3)
    heads = {"a": torch.randn(3, 4), "b": torch.randn(2, 4)}
    module = AdaMergingModule(enc, pre, taus, heads, 10.0, AdaMergingConfig(init=0.3))
    assert module.lambdas.shape == (3, len(pre))
    state = module.merged_state()
    for k in pre:  # λ = 0.3 everywhere: θ0 + 0.3 Σ τ
        torch.testing.assert_close(state[k], pre[k] + 0.3 * sum(t[k] for t in taus))
    lam = torch.zeros(3, len(pre))
    j = module.keys.index("1.weight")
    lam[1, j] = 0.7  # one task, one layer
    state = module.merged_state(lam)
    torch.testing.assert_close(state["1.weight"], pre["1.weight"] + 0.7 * taus[1]["1.weight"])
    torch.testing.assert_close(state["3.bias"], pre["3.bias"])


def test_entropy_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0]])  # uniform over 2 classes, then certain
    torch.testing.assert_close(entropy(logits), torch.tensor(0.5 * torch.log(torch.tensor(2.0)).item()))


def test_adamerging_config_values_are_checked(tiny_config):
    for key, value, words in (("init", 1.5, "[0, 1]"), ("steps", 0, "at least 1"), ("lr", -1.0, "positive"),
                              ("batch_size", 0, "at least 1")):
        path = tiny_config(**{f"merge__adamerging__{key}": value})
        with pytest.raises(ConfigError, match=f"merge.adamerging.{key}") as err:
            load_config(path)
        assert words in str(err.value)


@pytest.mark.slow
def test_adamerging_stage_learns_lambda_and_records_its_data(tiny_config):
    from pactmerge.pipeline import stages
    from pactmerge.pipeline.adamerging import DATA_USE, run_adamerging
    from pactmerge.pipeline.study import open_study

    path = tiny_config(merge={"methods": ["task_arithmetic"], "pact": ["none"], "alpha_grid": [0.5],
                              "pact_params": {"K": 0, "k": 0},
                              "adamerging": {"variants": ["none", "exact"], "steps": 8, "lr": 0.05,
                                             "batch_size": 8}},
                       comparisons={"joint": False, "sequential": False})
    ctx = open_study(load_config(path))
    stages.prepare(ctx)
    for t in ctx.task_keys:
        stages.finetune_individual(ctx, t)
    assert run_adamerging(ctx) is True
    assert run_adamerging(ctx) is False  # idempotent
    plain, pact = ctx.store.entry("merged/adamerging"), ctx.store.entry("merged/pact+adamerging")
    assert plain["data_use"] == DATA_USE and plain["alpha"] == 1.0 and plain["adamerging"]["steps"] == 8
    for entry in (plain, pact):
        lam = entry["adamerging"]["lambda_mean"]
        assert set(lam) == set(ctx.task_keys) and all(0.0 <= v <= 1.0 for v in lam.values())
        assert lam != {t: 0.3 for t in ctx.task_keys}  # λ moved from its start
    # PACT with K = 0 removes nothing: pact+adamerging learns the same λ and weights as adamerging
    a, b = ctx.store.load_state("merged/adamerging"), ctx.store.load_state("merged/pact+adamerging")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_learned_lambda_lowers_entropy_on_the_images_it_sees(tmp_path):
    import pytorch_lightning as pl

    enc = _encoder()
    pre = {k: v.clone() for k, v in enc.state_dict().items()}
    taus = _vectors(enc, 2, scale=1.0)
    g = torch.Generator().manual_seed(5)
    heads = {"a": torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=-1),
             "b": torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)}
    batch = {"a": {"images": torch.randn(16, 12, generator=g)}, "b": {"images": torch.randn(16, 12, generator=g)}}
    module = AdaMergingModule(enc, pre, taus, heads, 5.0, AdaMergingConfig(init=0.3, lr=0.05))

    def total_entropy(lam):
        from torch.func import functional_call

        from pactmerge.pipeline.heads import head_logits

        with torch.no_grad():
            state = module.merged_state(lam)
            return sum(float(entropy(head_logits(functional_call(enc, state, (b["images"],)), heads[t], 5.0)))
                       for t, b in batch.items())

    before = total_entropy(module.lambdas.detach().clone())
    trainer = pl.Trainer(max_steps=30, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch] * 30, batch_size=None))
    after = total_entropy(module.lambdas.detach().clone())
    assert after < before - 1e-3
    lam = module.lambdas.detach()
    assert float(lam.min()) >= 0.0 and float(lam.max()) <= 1.0
