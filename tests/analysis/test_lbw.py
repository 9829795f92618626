"""LBW diagnostics on state dicts: agreement with the merging core, PACT properties, aggregation, bad input."""

import math

import pytest
import torch

from pactmerge.analysis.lbw import LBWConfig, analyze_states, block_of, component_of
from pactmerge.errors import ConfigError, MergeError
from pactmerge.merging import PACTConfig, intrusion_energy, pact_filter

W, L = 32, 2


def tower_like(gen, scale=1.0):
    """An open_clip-ViT-shaped state dict (2 blocks of width 32) with random values."""
    sd = {"conv1.weight": torch.randn(W, 3, 4, 4, generator=gen), "positional_embedding": torch.randn(17, W, generator=gen),
          "proj": torch.randn(W, 16, generator=gen), "ln_post.weight": torch.ones(W)}
    for i in range(L):
        p = f"transformer.resblocks.{i}."
        sd[p + "attn.in_proj_weight"] = torch.randn(3 * W, W, generator=gen)
        sd[p + "attn.in_proj_bias"] = torch.randn(3 * W, generator=gen)
        sd[p + "attn.out_proj.weight"] = torch.randn(W, W, generator=gen)
        sd[p + "mlp.c_fc.weight"] = torch.randn(2 * W, W, generator=gen)
        sd[p + "mlp.c_proj.weight"] = torch.randn(W, 2 * W, generator=gen)
    return {k: v * scale for k, v in sd.items()}


@pytest.fixture(scope="module")
def models():
    gen = torch.Generator().manual_seed(0)
    pre = tower_like(gen)
    ft = {}
    for t in ("a", "b", "c"):
        delta = tower_like(gen, scale=0.05)
        ft[t] = {k: pre[k] + delta[k] for k in pre}
    return pre, ft


@pytest.fixture(scope="module")
def report(models):
    pre, ft = models
    return analyze_states(pre, ft, LBWConfig(K=4, k=2))


def test_keys_and_labels(report):
    keys = report["keys"]
    # 2-D float tensors only: conv kernels and vectors are not matrices by default
    assert "conv1.weight" not in keys and "ln_post.weight" not in keys and "transformer.resblocks.0.attn.in_proj_bias" not in keys
    assert report["n_matrix_keys"] == 2 + 4 * L
    assert keys["transformer.resblocks.1.mlp.c_proj.weight"]["component"] == "mlp_out"
    assert keys["transformer.resblocks.1.mlp.c_proj.weight"]["layer"] == "1"
    assert keys["proj"]["layer"] == "other"
    assert list(report["intrusion"]["by_layer"]) == ["0", "1", "other"]
    assert set(report["intrusion"]["by_component"]) == {"attn_in", "attn_out", "mlp_in", "mlp_out", "other"}
    assert len(report["most_affected_keys"]) == math.ceil(0.25 * report["n_matrix_keys"])


def test_intrusion_agrees_with_merging_core(models, report):
    pre, ft = models
    key = "transformer.resblocks.0.attn.in_proj_weight"
    w0 = pre[key].double()
    v0 = torch.linalg.svd(w0, full_matrices=False)[2][:4].T
    taus = [ft[t][key].double() - w0 for t in "abc"]
    rec = report["keys"][key]
    for t, tau in zip("abc", taus):
        assert rec["E_in_before"][t] == pytest.approx(intrusion_energy(tau, v0), rel=1e-9)
    _, diags = pact_filter(w0, taus, PACTConfig(K=4, k=2))
    for t, d in zip("abc", diags):
        assert rec["E_in_after"][t] == pytest.approx(d["E_in_after"], rel=1e-7, abs=1e-12)
        assert rec["removed_share"][t] == pytest.approx(d["removed_share"], rel=1e-7, abs=1e-12)


def test_pact_empties_the_others_reliance_spaces(report):
    # protect="others": task j's cleaned vector writes nothing into any other task's reliance space
    for key, rec in report["keys"].items():
        if any(d["guard_skipped"] for d in rec["pact"].values()):
            continue
        inf = rec["Inf_after"]
        for i in range(3):
            for j in range(3):
                if i != j:
                    assert inf[i][j] == pytest.approx(0.0, abs=1e-10), key
        assert max(rec["Inf_before"][0][1], rec["Inf_before"][1][0]) > 1e-4  # and there was something to remove


def test_averages(report):
    keys = report["keys"]
    by_task = report["intrusion"]["by_task"]
    assert by_task["b"]["before"] == pytest.approx(sum(r["E_in_before"]["b"] for r in keys.values()) / len(keys))
    sim = report["similarity"]["all"]
    assert sim[0][0] == pytest.approx(1.0) and sim[0][1] == pytest.approx(sim[1][0])
    top = report["most_affected_keys"]
    inf_top = report["interference"]["before"]["most_affected"]
    assert inf_top[0][2] == pytest.approx(sum(keys[k]["Inf_before"][0][2] for k in top) / len(top))


def test_hand_built_intrusion():
    # W0's core (K=2) is the input directions e0, e1; task "in" writes there, task "out" elsewhere
    w0 = torch.diag(torch.tensor([9.0, 8.0, 1.0, 1.0, 1.0, 1.0]))
    pre = {"w": w0}
    into = torch.zeros(6, 6)
    into[:, 0] = 1.0
    away = torch.zeros(6, 6)
    away[:, 4] = 1.0
    rep = analyze_states(pre, {"in": {"w": w0 + into}, "out": {"w": w0 + away}}, LBWConfig(K=2, k=1, pact=False))
    e_in = rep["keys"]["w"]["E_in_before"]
    assert e_in == {"in": pytest.approx(1.0), "out": pytest.approx(0.0)}
    assert "after" not in rep["intrusion"]["by_task"]["in"] and list(rep["interference"]) == ["before"]
    # "in" relies on e1 (its update leaves it alone); "out" relies on e0 and e1, so "in" interferes with it
    inf = rep["keys"]["w"]["Inf_before"]
    assert inf[1][0] == pytest.approx(1.0) and inf[0][1] == pytest.approx(0.0)


def test_labels():
    assert block_of("visual.transformer.resblocks.11.attn.out_proj.weight") == "11"
    assert component_of("transformer.resblocks.3.attn.in_proj_weight") == "attn_in"
    assert component_of("transformer.resblocks.3.attn.out_proj.weight") == "attn_out"
    assert component_of("positional_embedding") == "other"


def test_mismatch_names_keys(models):
    pre, ft = models
    bad = dict(ft["a"])
    bad["proj"] = torch.zeros(W, 8)
    del bad["transformer.resblocks.1.mlp.c_fc.weight"]
    with pytest.raises(MergeError, match=r"missing keys: transformer\.resblocks\.1\.mlp\.c_fc\.weight.*proj \(32, 8\) instead of \(32, 16\)"):
        analyze_states(pre, {"a": ft["a"], "bad": bad}, LBWConfig(K=4, k=2))


def test_bad_requests(models):
    pre, ft = models
    with pytest.raises(ConfigError, match="at least one fine-tuned"):
        analyze_states(pre, {}, LBWConfig())
    with pytest.raises(ConfigError, match="no matrix keys"):
        analyze_states(pre, ft, LBWConfig(exclude=("*",)))
    with pytest.raises(MergeError, match="protect"):
        analyze_states(pre, ft, LBWConfig(K=4, k=2, pact_params={"protect": "nobody"}))


def test_randomized_svd_close_to_exact(models, report):
    pre, ft = models
    fast = analyze_states(pre, ft, LBWConfig(K=4, k=2, svd="randomized", pact=False))
    for key, rec in report["keys"].items():
        for t in "abc":
            # Gaussian test weights have flat spectra, the randomized sketch's worst case: a few % off
            assert fast["keys"][key]["E_in_before"][t] == pytest.approx(rec["E_in_before"][t], rel=0.1, abs=1e-3), key
