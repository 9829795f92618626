"""PACT: every property the specification lists, on small and on realistic shapes."""

import pytest
import torch

from pactmerge.errors import MergeError
from pactmerge.merging import PACTConfig, intrusion_energy, merge, orth, pact_filter
from pactmerge.merging.linalg import top_svd
from pactmerge.merging.pact import pact_filter_batch


def _problem(m=40, n=30, T=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(m, n, generator=g)
    taus = [0.1 * torch.randn(m, n, generator=g) for _ in range(T)]
    return w0, taus


def _protected(w0, taus, cfg):
    """P_j recomputed independently with plain SVDs (float64) for the property checks."""
    V0 = torch.linalg.svd(w0.double()).Vh[: cfg.K].T
    Vt = [torch.linalg.svd(t.double()).Vh[: cfg.k].T for t in taus]
    R = [orth(V0 - V @ (V.T @ V0), cfg.rtol) for V in Vt]
    if cfg.protect == "self":
        return R, Vt
    return [orth(torch.cat([R[i] for i in range(len(taus)) if i != j], 1), cfg.rtol) for j in range(len(taus))], Vt


@pytest.mark.parametrize("protect", ["others", "self", "all"])
def test_nothing_left_in_protected_space_norm_and_idempotence(protect):
    w0, taus = _problem()
    cfg = PACTConfig(K=6, k=3, protect=protect, guard=1.0)
    cleaned, diags = pact_filter(w0, taus, cfg)
    P, _ = _protected(w0, taus, cfg) if protect != "all" else ([torch.linalg.svd(w0.double()).Vh[:6].T] * 4, None)
    for j, (t, c) in enumerate(zip(taus, cleaned)):
        assert (c.double() @ P[j]).norm() <= 1e-5 * t.norm()
        assert c.norm() <= t.norm() * (1 + 1e-6)
        assert diags[j]["dim_P"] == P[j].shape[1]
    if protect == "all":
        assert all(d["E_in_after"] < 1e-10 for d in diags)
    # idempotent: projecting the cleaned vectors out of the same P_j changes nothing
    for j, c in enumerate(cleaned):
        c64 = c.double()
        assert torch.allclose(c64 - (c64 @ P[j]) @ P[j].T, c64, atol=1e-6)


def test_self_keeps_the_task_core():
    w0, taus = _problem()
    cfg = PACTConfig(K=6, k=3, protect="self", guard=1.0)
    cleaned, diags = pact_filter(w0, taus, cfg)
    _, Vt = _protected(w0, taus, cfg)
    for t, c, V in zip(taus, cleaned, Vt):
        assert torch.allclose(c.double() @ V, t.double() @ V, atol=1e-6)
    assert all(d["removed_share"] > 0 for d in diags)


def test_zero_K_is_identity_and_single_task_others_is_identity():
    w0, taus = _problem()
    cleaned, diags = pact_filter(w0, taus, PACTConfig(K=0, k=3))
    assert all(torch.equal(a, b) for a, b in zip(cleaned, taus))
    cleaned, diags = pact_filter(w0, taus[:1], PACTConfig(K=6, k=3, protect="others"))
    assert torch.equal(cleaned[0], taus[0]) and diags[0]["dim_P"] == 0


def test_task_order_does_not_matter():
    w0, taus = _problem(T=5)
    cfg = PACTConfig(K=5, k=2, guard=1.0)
    cleaned, _ = pact_filter(w0, taus, cfg)
    perm = [3, 0, 4, 1, 2]
    cleaned_p, _ = pact_filter(w0, [taus[i] for i in perm], cfg)
    for pos, i in enumerate(perm):
        assert torch.allclose(cleaned_p[pos], cleaned[i], atol=1e-5)


def test_zero_pretrained_matrix_and_too_large_ranks_are_refused():
    w0, taus = _problem(m=10, n=8)
    with pytest.raises(MergeError, match="all zeros"):
        pact_filter(torch.zeros_like(w0), taus, PACTConfig(K=2, k=2), key="blk.w")
    with pytest.raises(MergeError, match="K=9 is larger than min"):
        pact_filter(w0, taus, PACTConfig(K=9, k=2))
    with pytest.raises(MergeError, match="k=12 is larger"):
        pact_filter(w0, taus, PACTConfig(K=2, k=12))


def test_guard_leaves_key_unchanged_and_says_so():
    w0, taus = _problem(m=12, n=10, T=6)
    cleaned, diags = pact_filter(w0, taus, PACTConfig(K=8, k=1, guard=0.5))
    assert all(d["guard_skipped"] for d in diags)
    assert all(torch.equal(a, b) for a, b in zip(cleaned, taus))


def test_rank_deficient_union_invents_no_directions():
    """All tasks identical: every R_t is the same space, so P_j has dim K - k', not (T-1) K."""
    w0, taus = _problem(T=1)
    taus = taus * 4
    _, diags = pact_filter(w0, taus, PACTConfig(K=6, k=3, guard=1.0))
    assert all(d["dim_P"] <= 6 for d in diags)


@pytest.mark.slow
def test_realistic_shape_keeps_a_substantial_share_of_the_update():
    """768x768, T = 8, K = 15, k = 8: the filter must not wipe the update (the public code's failure)."""
    g = torch.Generator().manual_seed(0)
    n, T = 768, 8
    # a dominant low-rank part over a bulk, like a trained weight's spectrum
    w0 = torch.randn(n, 64, generator=g) @ torch.randn(64, n, generator=g) / 8 + torch.randn(n, n, generator=g) / n**0.5
    taus = []
    for _ in range(T):
        low = torch.randn(n, 8, generator=g) @ torch.randn(8, n, generator=g) / 8
        taus.append(1e-3 * (low + 0.1 * torch.randn(n, n, generator=g)))
    cfg = PACTConfig(K=15, k=8)
    cleaned, diags = pact_filter(w0, taus, cfg)
    for t, c, d in zip(taus, cleaned, diags):
        kept = float(c.norm() ** 2 / t.norm() ** 2)
        assert kept > 0.8, kept  # about dim(P_j) / n of an isotropic update goes (~9% here), not all of it
        assert 0 < d["dim_P"] <= 7 * 15 and not d["guard_skipped"]
        assert d["E_in_after"] < 1e-10 < d["E_in_before"]
    V0 = top_svd(w0, 15)[2].float()
    assert abs(intrusion_energy(taus[0], V0) - diags[0]["E_in_before"]) < 1e-6


def test_intrusion_energy_hand_computed():
    tau = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert intrusion_energy(tau, torch.tensor([[1.0], [0.0]])) == pytest.approx(9 / 25)
    assert intrusion_energy(torch.zeros(2, 2), torch.eye(2)) == 0.0


def test_rank_modes_fraction_and_energy():
    w0, taus = _problem(m=40, n=30)
    _, d = pact_filter(w0, taus, PACTConfig(rank_mode="fraction", K_fraction=0.2, k_fraction=0.1, guard=1.0))
    assert d[0]["K"] == 6 and d[0]["k"] == 3
    w_low = torch.diag(torch.tensor([10.0, 1.0] + [0.01] * 28))
    w_low = torch.cat([w_low, torch.zeros(10, 30)])
    _, d = pact_filter(w_low, taus, PACTConfig(rank_mode="energy", tau_pre=0.95, guard=1.0))
    assert d[0]["K"] == 1  # 100 / 101.0028 of the energy is in the first direction


def test_pact_diagnostics_in_merge_result(models):
    pre, fts = models
    res = merge(pre, fts, "pact+tsvm", pact={"K": 2, "k": 1})
    diag = res.diagnostics["pact"]
    assert "transformer.resblocks.0.attn.in_proj_weight" in diag["keys"]
    assert len(diag["keys"]["transformer.resblocks.0.attn.in_proj_weight"]) == 3
    assert set(diag["layers"]) >= {"transformer.resblocks.0", "transformer.resblocks.1", "positional_embedding", "proj"}
    assert diag["overall"]["entries"] == 3 * len(diag["keys"])
    import json

    json.dumps(res.diagnostics)


def test_batched_filter_equals_single_key():
    w0, taus = _problem()
    w1, taus1 = _problem(seed=1)
    cfg = PACTConfig(K=5, k=2, guard=1.0)
    batch, _ = pact_filter_batch(torch.stack([w0, w1]), torch.stack([torch.stack(taus), torch.stack(taus1)], 1), cfg, ["a", "b"])
    single, _ = pact_filter(w1, taus1, cfg)
    assert torch.allclose(batch[:, 1], torch.stack(single), atol=1e-6)
