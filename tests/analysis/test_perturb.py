"""Masks and noise of the perturbation view; curves with a stand-in evaluator."""

import pytest
import torch

from pactmerge.analysis.perturb import (
    PerturbConfig,
    build_masks,
    lbw_mask,
    perturbation_curves,
    perturbed_state,
    random_mask,
)
from pactmerge.errors import ConfigError


def test_lbw_mask_hand_case():
    w0 = torch.tensor([[9.0, 8.0, 7.0, 1.0], [6.0, 5.0, 0.5, 0.1]])
    tau = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0]])
    # |τ| median is 0: the candidates are the entries τ leaves at 0; largest |W0| among them: 8, 7
    m = lbw_mask(w0, tau, fraction=0.25)
    assert m.tolist() == [[False, True, True, False], [False, False, False, False]]


def test_random_mask_count_and_seed():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = random_mask(torch.Size([7, 5]), 6, g1), random_mask(torch.Size([7, 5]), 6, g2)
    assert a.sum() == 6 and torch.equal(a, b)


def test_build_masks_same_size():
    g = torch.Generator().manual_seed(0)
    pre = {"w": torch.randn(20, 10, generator=g), "b": torch.randn(10, generator=g)}
    ft = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in pre.items()}
    lbw, rnd = build_masks(pre, ft, ["w"], PerturbConfig(fraction=0.1))
    assert lbw["w"].sum() == rnd["w"].sum() == 20 and list(lbw) == ["w"]


def test_perturbed_state_only_inside_mask():
    g = torch.Generator().manual_seed(1)
    pre = {"w": torch.randn(6, 6, generator=g), "n": torch.tensor(3)}
    ft = {"w": pre["w"] + 0.01, "n": pre["n"]}
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, :3] = True
    out = perturbed_state(ft, pre, {"w": mask}, strength=1.0, seed=0)
    diff = out["w"] - ft["w"]
    assert (diff[~mask] == 0).all() and (diff[mask] != 0).all()
    assert out["n"] is ft["n"]
    again = perturbed_state(ft, pre, {"w": mask}, strength=1.0, seed=0)
    assert torch.equal(again["w"], out["w"])
    assert perturbed_state(ft, pre, {"w": mask}, strength=0.0, seed=0)["w"] is ft["w"]
    # noise scales with strength and with |W0|
    half = perturbed_state(ft, pre, {"w": mask}, strength=0.5, seed=0)
    torch.testing.assert_close(half["w"] - ft["w"], 0.5 * diff)


def test_curves_with_stand_in_evaluator():
    g = torch.Generator().manual_seed(2)
    pre = {"w": torch.randn(16, 16, generator=g)}
    ft = {"a": {"w": pre["w"] + 0.05 * torch.randn(16, 16, generator=g)}}

    def evaluate(task, state):  # "accuracy" falls with the distance to the fine-tuned weights
        return 1.0 - float((state["w"] - ft[task]["w"]).norm()) / 100

    cfg = PerturbConfig(fraction=0.05, strengths=(0.0, 1.0, 2.0))
    curves = perturbation_curves(pre, ft, ["w"], evaluate, cfg)["a"]
    assert curves["strengths"] == [0.0, 1.0, 2.0]
    assert curves["lbw"][0] == curves["random"][0] == 1.0
    # the LBW mask holds larger |W0| than a random one, so the same noise hurts more
    assert curves["lbw"][2] < curves["lbw"][1] < 1.0 and curves["lbw"][1] < curves["random"][1]
    assert curves["mask_size"] == round(0.05 * 256)


def test_config_validation():
    with pytest.raises(ConfigError, match="fraction"):
        PerturbConfig(fraction=0.0)
    with pytest.raises(ConfigError, match="strengths"):
        PerturbConfig(strengths=(-1.0,))
