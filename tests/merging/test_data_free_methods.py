"""DARE, Model Breadcrumbs, Consensus (TALL masks) and MagMax: hand-computed cases, their
defining properties, and ``pact+X`` with K = 0 equal to ``X`` bit for bit."""

import pytest
import torch

from pactmerge.errors import MergeError
from pactmerge.merging import get_method, merge, merge_files
from pactmerge.merging.methods.dare import keep_mask

from fixtures import finetune, model_files, tiny_encoder

NEW = ["dare", "breadcrumbs", "consensus", "magmax"]


def _models(vectors, key="w"):
    """Pre-trained zero vector plus one fine-tuned model per task vector (a vector key)."""
    pre = {key: torch.zeros(len(vectors[0]))}
    return pre, [{key: torch.tensor(v, dtype=torch.float32)} for v in vectors]


def _equal(a, b) -> bool:
    return sorted(a.tau) == sorted(b.tau) and all(torch.equal(a.tau[k], b.tau[k]) for k in a.tau)


def _close(a, b) -> bool:
    """Equal up to float32 rounding (DARE's sum is accumulated in float64, Task Arithmetic's in float32)."""
    return sorted(a.tau) == sorted(b.tau) and all(torch.allclose(a.tau[k], b.tau[k], rtol=1e-6, atol=1e-7) for k in a.tau)


@pytest.fixture(scope="module")
def deep_models():
    pre = tiny_encoder(width=12, layers=4)  # 4 keys of each matrix shape
    return pre, [finetune(pre, t) for t in range(4)]


def test_registered_with_pact_forms_papers_and_small_grids():
    for name in NEW:
        spec, pact = get_method(name), get_method("pact+" + name)
        assert spec.name == name and pact.pact and pact.base == name
        assert "arXiv" in spec.paper and 0 < len(spec.alpha_grid) <= 7
        lo, hi = spec.alpha_bounds
        assert lo <= spec.alpha_grid[0] and spec.alpha_grid[-1] <= hi


# -- DARE -------------------------------------------------------------------------------------------
def test_dare_masks_are_seeded_by_key_and_task_identity():
    # the draws of seed 0 for key "w": task "c" keeps [1,0,1,1,0,1,0,1], task "d" [0,0,1,0,0,1,1,0]
    assert keep_mask("w", "c", 8, 0.5, 0).int().tolist() == [1, 0, 1, 1, 0, 1, 0, 1]
    assert keep_mask("w", "d", 8, 0.5, 0).int().tolist() == [0, 0, 1, 0, 0, 1, 1, 0]
    pre, fts = _models([[1, 2, 3, 4, 5, 6, 7, 8], [10, 20, 30, 40, 50, 60, 70, 80]])
    res = merge(pre, fts, "dare", params={"p": 0.5}, task_ids=["c", "d"])
    # 2 * (tau_c * m_c + tau_d * m_d) = 2 * [1, 0, 33, 4, 0, 66, 70, 8]
    assert torch.equal(res.tau["w"], torch.tensor([2.0, 0.0, 66.0, 8.0, 0.0, 132.0, 140.0, 16.0]))
    assert res.default_alpha == 0.3


def test_dare_keeps_a_share_one_minus_p_and_rescales():
    for p in (0.3, 0.9):
        kept = keep_mask("k", "t", 200_000, p, 3).double().mean().item()
        assert abs(kept - (1 - p)) < 0.005
    pre, fts = _models([[2.0] * 1000])
    res = merge(pre, fts, "dare", params={"p": 0.75}, task_ids=["t"])
    assert set(res.tau["w"].tolist()) == {0.0, 8.0}  # dropped, or 2 / (1 - 0.75)


def test_dare_with_p_zero_is_its_base(models):
    pre, fts = models
    assert _close(merge(pre, fts, "dare", params={"p": 0.0}), merge(pre, fts, "task_arithmetic"))
    tied = merge(pre, fts, "dare", params={"p": 0.0, "base": "ties", "ties_k": 30})
    assert _equal(tied, merge(pre, fts, "ties", params={"k": 30}))


def test_dare_ties_base_trims_the_dropped_vectors():
    pre, fts = _models([[1, 2, 3, 4, 5, 6, 7, 8], [10, 20, 30, 40, 50, 60, 70, 80]])
    res = merge(pre, fts, "dare", params={"p": 0.5, "base": "ties", "ties_k": 25}, task_ids=["c", "d"])
    # dropped: c = [2,0,6,8,0,12,0,16], d = [0,0,60,0,0,120,140,0]; TIES k = 25% of D = 8 keeps
    # |x| >= the 6th smallest: c keeps 12 and 16 (and 8 ties none), d keeps 60, 120, 140.
    # c: sorted |x| = 0,0,0,2,6,8,12,16 -> 6th smallest 8 -> keeps 8, 12, 16
    # d: sorted |x| = 0,0,0,0,0,60,120,140 -> 6th smallest 60 -> keeps 60, 120, 140
    assert torch.equal(res.tau["w"], torch.tensor([0.0, 0.0, 60.0, 8.0, 0.0, 66.0, 140.0, 16.0]))


def test_dare_independent_of_task_order_batching_and_source(deep_models, tmp_path):
    pre, fts = deep_models
    ref = merge(pre, fts, "dare", batch_bytes=1 << 40)
    assert _equal(ref, merge(pre, fts, "dare", batch_bytes=1))
    assert _equal(ref, merge(pre, fts, "dare", batch_bytes=3 * 4 * 4 * 36 * 12))
    assert _equal(ref, merge(pre, fts[::-1], "dare"))  # identities are content fingerprints
    ids = ["a", "b", "c", "d"]
    named = merge(pre, fts, "dare", task_ids=ids)
    assert _equal(named, merge(pre, fts[::-1], "dare", task_ids=ids[::-1], batch_bytes=1))
    assert not _equal(named, merge(pre, fts, "dare", task_ids=ids, params={"seed": 1}))
    pre_path, paths = model_files(tmp_path, pre, fts)
    assert _equal(ref, merge_files(pre_path, paths, "dare"))
    tied = merge(pre, fts, "dare", params={"base": "ties"}, batch_bytes=1 << 40)
    tied_rev = merge(pre, fts[::-1], "dare", params={"base": "ties"}, batch_bytes=1)
    assert all(torch.allclose(tied.tau[k], tied_rev.tau[k], rtol=1e-6, atol=1e-7) for k in tied.tau)


def test_dare_rejects_bad_p():
    pre, fts = _models([[1.0, 2.0]])
    for p in (1.0, -0.1):
        with pytest.raises(MergeError, match="p must be a drop probability"):
            merge(pre, fts, "dare", params={"p": p})


# -- Model Breadcrumbs ------------------------------------------------------------------------------
def test_breadcrumbs_by_hand():
    # D = 10, beta = 0.3 masks the 3 smallest |x|, gamma = 0.1 the largest one, per task
    t1 = [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, 0.9, -5.0]
    t2 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    pre, fts = _models([t1, t2])
    res = merge(pre, fts, "breadcrumbs", params={"beta": 0.3, "gamma": 0.1})
    # t1 keeps -0.4 .. 0.9; t2 keeps 4 .. 9
    expected = torch.tensor([0.0, 0.0, 0.0, 3.6, 5.5, 5.4, 7.7, 7.2, 9.9, 0.0])
    assert torch.allclose(res.tau["w"], expected)


def test_breadcrumbs_thresholds_are_per_key_and_per_task():
    pre = {"a": torch.zeros(4), "b": torch.zeros(4)}
    ft = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([100.0, 200.0, 300.0, 400.0])}
    res = merge(pre, [ft], "breadcrumbs", params={"beta": 0.5, "gamma": 0.25})
    assert torch.equal(res.tau["a"], torch.tensor([0.0, 0.0, 3.0, 0.0]))
    assert torch.equal(res.tau["b"], torch.tensor([0.0, 0.0, 300.0, 0.0]))
    with pytest.raises(MergeError, match="beta \\+ gamma"):
        merge(pre, [ft], "breadcrumbs", params={"beta": 0.7, "gamma": 0.3})


def test_breadcrumbs_without_masks_is_task_arithmetic(models):
    pre, fts = models
    res = merge(pre, fts, "breadcrumbs", params={"beta": 0.0, "gamma": 0.0})
    ta = merge(pre, fts, "task_arithmetic")
    assert _equal(res, ta)


# -- Consensus (TALL masks) -------------------------------------------------------------------------
CONSENSUS_TASKS = [[1.0, 0.0, 2.0, -1.0], [1.0, 3.0, -2.0, 0.0], [0.0, 1.0, 1.0, 0.5]]


def test_consensus_by_hand():
    pre, fts = _models(CONSENSUS_TASKS)
    # tau_MTL = [2, 4, 1, -0.5]; masks |tau_t| > 0.5 |tau_MTL - tau_t|:
    # task 1 [T, F, T, T], task 2 [T, T, T, F], task 3 [F, F, T, F] (0.5 > 0.5 is false)
    # counts [2, 1, 3, 1]
    res = merge(pre, fts, "consensus", params={"lam": 0.5, "k": 2})
    assert torch.equal(res.tau["w"], torch.tensor([2.0, 0.0, 1.0, 0.0]))
    res3 = merge(pre, fts, "consensus", params={"lam": 0.5, "k": 3})
    assert torch.equal(res3.tau["w"], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    for k in (0, 1):
        res = merge(pre, fts, "consensus", params={"lam": 0.5, "k": k})
        assert torch.equal(res.tau["w"], torch.tensor([2.0, 4.0, 1.0, -0.5]))
    assert merge(pre, fts, "consensus", params={"lam": 0.5, "k": 4}).tau["w"].abs().sum() == 0


def test_consensus_ties_base_by_hand():
    pre, fts = _models(CONSENSUS_TASKS)
    # TIES with k = 100: signs of the sums [+, +, +, -]; disjoint means [1, 2, 1.5, -1]
    # masks |tau_t| > 1.0 |tau_MTL - tau_t|: task 1 [T, F, T, T], task 2 [T, T, F, F], task 3 [F, F, T, F]
    res = merge(pre, fts, "consensus", params={"lam": 1.0, "k": 2, "base": "ties", "ties_k": 100})
    assert torch.equal(res.tau["w"], torch.tensor([1.0, 0.0, 1.5, 0.0]))


def test_consensus_k0_is_its_base_exactly(models):
    pre, fts = models
    assert _equal(merge(pre, fts, "consensus", params={"k": 0}), merge(pre, fts, "task_arithmetic"))
    res = merge(pre, fts, "consensus", params={"k": 0, "base": "ties", "ties_k": 30})
    assert _equal(res, merge(pre, fts, "ties", params={"k": 30}))


def test_consensus_masks_entries_ties_settles_last():
    # entry 0 cancels (+2, -2): TIES gives it the majority sign's value (+2) after the pass;
    # the consensus mask must then judge +2: |2| > 1 * |2 - 2| on task 1 only -> 1 task < k = 2 -> 0
    pre, fts = _models([[2.0, 3.0, 4.0, -1.0], [-2.0, 5.0, 1.0, 0.0]])
    ties = merge(pre, fts, "ties", params={"k": 100})
    assert torch.allclose(ties.tau["w"], torch.tensor([2.0, 4.0, 2.5, -1.0]))
    res = merge(pre, fts, "consensus", params={"lam": 1.0, "k": 2, "base": "ties", "ties_k": 100})
    # entry 1: |3| > |4-3|, |5| > |4-5| -> 2; entry 2: |4| > 1.5, |1| > 1.5 false -> 1; entry 3: 1 > 0, 0 > 1 -> 1
    assert torch.equal(res.tau["w"], torch.tensor([0.0, 4.0, 0.0, 0.0]))
    one = merge(pre, fts, "consensus", params={"lam": 1.0, "k": 1, "base": "ties", "ties_k": 100})
    assert torch.equal(one.tau["w"], torch.tensor([2.0, 4.0, 2.5, -1.0]))


# -- MagMax -----------------------------------------------------------------------------------------
def test_magmax_by_hand_and_order_free():
    tasks = [[1.0, -3.0, 2.0, 0.0], [-2.0, 1.0, -2.0, 0.0], [0.5, 2.0, 1.0, 0.0]]
    pre, fts = _models(tasks)
    res = merge(pre, fts, "magmax")
    # entry 2 ties on |2| between +2 and -2: the positive value, whatever the order
    assert torch.equal(res.tau["w"], torch.tensor([-2.0, -3.0, 2.0, 0.0]))
    assert torch.equal(merge(pre, fts[::-1], "magmax").tau["w"], res.tau["w"])
    assert res.default_alpha == 0.5


# -- pact+X with K = 0 --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,params",
    [("dare", {}), ("dare", {"base": "ties"}), ("breadcrumbs", {}), ("consensus", {}),
     ("consensus", {"base": "ties"}), ("magmax", {})],
)
def test_pact_with_K0_is_the_plain_method(method, params, models):
    pre, fts = models
    plain = merge(pre, fts, method, params=params)
    pact = merge(pre, fts, "pact+" + method, params=params, pact={"K": 0, "k": 2})
    assert _equal(plain, pact)
    assert any(float(v.abs().sum()) > 0 for v in plain.tau.values())
    cleaning = merge(pre, fts, "pact+" + method, params=params, pact={"K": 3, "k": 2})
    assert not _equal(plain, cleaning)  # PACT does act on these models


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method,params", [("dare", {}), ("dare", {"base": "ties"}), ("breadcrumbs", {}),
                                           ("consensus", {}), ("magmax", {})])
def test_cpu_and_cuda_agree(method, params, deep_models):
    # DARE's masks are drawn on the CPU whatever the device: the same entries are dropped
    pre, fts = deep_models
    cpu = merge(pre, fts, method, params=params, device="cpu")
    gpu = merge(pre, fts, method, params=params, device="cuda")
    if method == "dare" and not params:  # the same entries dropped by every task
        assert all(torch.equal(cpu.tau[k] == 0, gpu.tau[k] == 0) for k in cpu.tau)
    assert all(torch.allclose(cpu.tau[k], gpu.tau[k], rtol=1e-5, atol=1e-6) for k in cpu.tau)


@pytest.mark.parametrize("method,params", [("dare", {"base": "ties"}), ("pact+dare", {"base": "ties"}),
                                           ("consensus", {"base": "ties"}), ("pact+breadcrumbs", {}),
                                           ("pact+magmax", {})])
def test_streaming_equals_in_memory(method, params, models, tmp_path):
    pre, fts = models
    pact = {"K": 3, "k": 2} if method.startswith("pact+") else None
    pre_path, paths = model_files(tmp_path, pre, fts)
    mem = merge(pre, fts, method, params=params, pact=pact)
    disk = merge_files(pre_path, paths, method, params=params, pact=pact)
    assert _equal(mem, disk)
