"""Hand-computed cases for weight averaging, TA and TIES; defining properties of TSV-M, Iso-C, Iso-CTS."""

import pytest
import torch

from pactmerge.merging import merge
from pactmerge.merging.linalg import top_svd


def _sd(**tensors):
    return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()}


def _models(vectors, key="w"):
    """Pre-trained zero vector plus one fine-tuned model per task vector (a vector key)."""
    pre = _sd(**{key: torch.zeros(len(vectors[0]))})
    return pre, [_sd(**{key: v}) for v in vectors]


def test_weight_averaging_and_task_arithmetic_by_hand():
    pre = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([1.0, 1.0]), "n": torch.tensor([5])}
    ft1 = {"w": pre["w"] + torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "b": torch.tensor([2.0, 0.0]), "n": torch.tensor([9])}
    ft2 = {"w": pre["w"] + torch.tensor([[3.0, 2.0], [0.0, -1.0]]), "b": torch.tensor([4.0, 1.0]), "n": torch.tensor([9])}
    wa = merge(pre, [ft1, ft2], "weight_averaging")
    assert torch.equal(wa.tau["w"], torch.tensor([[2.0, 1.0], [0.0, 0.0]]))
    assert torch.equal(wa.tau["b"], torch.tensor([2.0, -0.5]))
    assert wa.default_alpha == 1.0 and "n" not in wa.tau
    merged = wa.apply(pre)
    assert torch.equal(merged["w"], (ft1["w"] + ft2["w"]) / 2) and torch.equal(merged["n"], pre["n"])
    ta = merge(pre, [ft1, ft2], "ta")
    assert ta.method == "task_arithmetic" and ta.default_alpha == 0.3
    assert torch.equal(ta.tau["w"], torch.tensor([[4.0, 2.0], [0.0, 0.0]]))
    assert torch.equal(ta.tau["b"], torch.tensor([4.0, -1.0]))


def test_ties_by_hand_trim_elect_disjoint_mean():
    # k = 50%, D = 4: threshold = the (4 - int(4 * 0.5)) = 2nd smallest |x|; entries with |x| >= it
    # are kept (the reference's rule: 3 of 4 when magnitudes are distinct).
    pre, fts = _models([[4.0, -1.0, 3.0, 0.5], [-2.0, 0.2, 1.0, -6.0], [1.0, 5.0, -0.1, 0.3]])
    res = merge(pre, fts, "ties", params={"k": 50})
    # trimmed: [4,-1,3,0], [-2,0,1,-6], [1,5,0,0.3]; sums [3,4,4,-5.7]; signs [+,+,+,-]
    # disjoint means of the agreeing entries: [(4+1)/2, 5, (3+1)/2, -6]
    assert torch.allclose(res.tau["w"], torch.tensor([2.5, 5.0, 2.0, -6.0]))


def test_ties_zero_sum_takes_the_majority_sign():
    # entry 0 cancels exactly (+2, -2); the other elected signs are mostly positive -> take +2
    pre, fts = _models([[2.0, 3.0, 4.0, -1.0], [-2.0, 5.0, 1.0, 0.0]])
    res = merge(pre, fts, "ties", params={"k": 100})
    assert torch.allclose(res.tau["w"], torch.tensor([2.0, 4.0, 2.5, -1.0]))
    # mostly negative elected signs -> the cancelled entry takes the negative value
    pre, fts = _models([[2.0, -3.0, -4.0, -1.0], [-2.0, -5.0, -1.0, 0.0]])
    res = merge(pre, fts, "ties", params={"k": 100})
    assert torch.allclose(res.tau["w"], torch.tensor([-2.0, -4.0, -2.5, -1.0]))


def test_ties_global_threshold_spans_keys_and_per_key_option():
    pre = {"a": torch.zeros(2), "b": torch.zeros(2)}
    ft = {"a": torch.tensor([10.0, 9.0]), "b": torch.tensor([1.0, 2.0])}
    # k = 25%: globally D = 4, threshold = 3rd smallest |x| = 9; per key D = 2, threshold = the max
    glob = merge(pre, [ft], "ties", params={"k": 25})
    assert torch.equal(glob.tau["a"], torch.tensor([10.0, 9.0])) and torch.equal(glob.tau["b"], torch.zeros(2))
    per_key = merge(pre, [ft], "ties", params={"k": 25, "threshold_scope": "per_key"})
    assert torch.equal(per_key.tau["a"], torch.tensor([10.0, 0.0])) and torch.equal(per_key.tau["b"], torch.tensor([0.0, 2.0]))


def test_ties_global_threshold_matches_kthvalue_on_the_concatenation(models):
    pre, fts = models
    res = merge(pre, fts, "ties", params={"k": 20})
    keys = [k for k in pre if pre[k].is_floating_point()]
    flat = torch.stack([torch.cat([(f[k] - pre[k]).flatten() for k in keys]) for f in fts])
    D = flat.shape[1]
    thr = flat.abs().kthvalue(D - int(D * 0.2), dim=1, keepdim=True).values
    trimmed = flat * (flat.abs() >= thr)
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    expected = (trimmed * agree).sum(0) / agree.sum(0).clamp_min(1)
    got = torch.cat([res.tau[k].flatten() for k in keys])
    assert torch.allclose(got, expected, atol=1e-6)


def test_tsvm_single_task_at_full_rank_returns_the_task_vector():
    g = torch.Generator().manual_seed(0)
    pre = {"w": torch.randn(9, 6, generator=g), "v": torch.randn(3, 8, generator=g)}
    ft = {k: v + torch.randn(v.shape, generator=g) for k, v in pre.items()}
    res = merge(pre, [ft], "tsvm")
    for k in pre:
        assert torch.allclose(res.tau[k], ft[k] - pre[k], atol=1e-5)


def test_tsvm_matches_a_plain_svd_loop(models):
    pre, fts = models
    key = "transformer.resblocks.0.attn.in_proj_weight"
    taus = [(f[key] - pre[key]).double() for f in fts]
    r = min(taus[0].shape) // 3
    svds = [torch.linalg.svd(t, full_matrices=False) for t in taus]
    U = torch.cat([s.U[:, :r] for s in svds], 1)
    S = torch.cat([s.S[:r] for s in svds])
    V = torch.cat([s.Vh[:r].T for s in svds], 1)
    a, _, b = torch.linalg.svd(U, full_matrices=False)
    c, _, d = torch.linalg.svd(V, full_matrices=False)
    expected = (a @ b) @ torch.diag(S) @ (c @ d).T
    got = merge(pre, fts, "tsvm").tau[key].double()
    assert (got - expected).norm() / expected.norm() < 1e-5


def test_iso_c_singular_values_all_equal_and_same_subspaces(models):
    pre, fts = models
    key = "transformer.resblocks.1.mlp.c_fc.weight"
    res = merge(pre, fts, "iso_c")
    s = torch.linalg.svdvals(res.tau[key].double())
    assert (s.max() - s.min()) / s.max() < 1e-5
    delta = sum((f[key] - pre[key]).double() for f in fts)
    sd = torch.linalg.svdvals(delta)
    assert s.mean() == pytest.approx(float(sd.mean()), rel=1e-5)
    U = torch.linalg.svd(delta).U[:, : min(delta.shape)]
    assert torch.allclose(U @ (U.T @ res.tau[key].double()), res.tau[key].double(), atol=1e-5)


def test_iso_cts_keeps_the_common_subspace():
    g = torch.Generator().manual_seed(0)
    m = n = 20
    T = 4
    pre = {"w": torch.randn(m, n, generator=g)}
    fts = [{"w": pre["w"] + torch.randn(m, n, generator=g)} for _ in range(T)]
    res = merge(pre, fts, "iso_cts", params={"f": 0.6})
    c, s = 20 - 4 * 2, 2  # s = round(20 * 0.4 / 4) = 2
    delta = sum(f["w"] - pre["w"] for f in fts)
    Uc = top_svd(delta, c)[0]
    out = res.tau["w"].double()
    sv = torch.linalg.svdvals(out)
    # the common directions are in the output's column space, with the common (isotropic) weight
    assert torch.allclose(Uc @ (Uc.T @ out), out - (out - Uc @ (Uc.T @ out)), atol=1e-6)
    assert (out.T @ Uc).norm() ** 2 == pytest.approx(float(sv.mean() ** 2 * c), rel=1e-4)
    assert (sv.max() - sv.min()) / sv.max() < 1e-5  # isotropic


def test_randomized_tsvm_close_to_exact_on_decaying_spectra():
    g = torch.Generator().manual_seed(0)
    m = n = 64
    pre = {"w": torch.randn(m, n, generator=g)}
    fts = []
    for _ in range(4):
        U, _ = torch.linalg.qr(torch.randn(m, m, generator=g))
        V, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
        fts.append({"w": pre["w"] + (U * torch.exp(-torch.arange(m) / 2.0)) @ V.T})
    exact = merge(pre, fts, "tsvm").tau["w"]
    rand = merge(pre, fts, "tsvm", params={"svd": "randomized"}).tau["w"]
    assert (rand - exact).norm() / exact.norm() < 1e-3
