"""Randomized merges do not depend on batching, task order, source (file or memory) or device.

Each matrix's Gaussian test matrix is drawn on the CPU from a generator seeded by (seed, key,
task identity, purpose); the task identity is a content fingerprint of the fine-tuned model
(or a caller's ``task_ids``), never its position. Measured on this file's models (CPU):
batch 1 / 3 / all: bitwise equal; reversed task order: at most ~5e-8 relative (float32
rounding where task blocks are concatenated in another order), against 0.5-0.7 before.
"""

import pytest
import torch

from pactmerge.merging import SVDOptions, merge, merge_files, randomized_svd
from pactmerge.merging.linalg import top_svd
from pactmerge.merging.sources import DictSource, fingerprint

from fixtures import finetune, model_files, tiny_encoder

RAND = {"svd": "randomized", "oversample": 2, "power_iters": 1, "seed": 7}
PACT = {"K": 3, "k": 2}


def _rel_diff(a, b) -> float:
    return max(float((a[k] - b[k]).abs().max()) / max(float(a[k].abs().max()), 1e-30) for k in a)


@pytest.fixture(scope="module")
def deep_models():
    pre = tiny_encoder(width=12, layers=4)  # 4 keys of each matrix shape
    return pre, [finetune(pre, t) for t in range(4)]


@pytest.mark.parametrize("method", ["tsvm", "pact+tsvm", "iso_cts", "pact+ties"])
def test_randomized_merge_independent_of_batching_and_order(method, deep_models):
    pre, fts = deep_models
    pact = PACT if method.startswith("pact+") else None
    ref = merge(pre, fts, method, params=RAND, pact=pact, batch_bytes=1 << 40)  # every same-shape key at once
    one = merge(pre, fts, method, params=RAND, pact=pact, batch_bytes=1)  # one key per batch
    size = 4 * 4 * 36 * 12  # T * float32 * one in_proj: 3 such keys per batch
    three = merge(pre, fts, method, params=RAND, pact=pact, batch_bytes=3 * size)
    rev = merge(pre, fts[::-1], method, params=RAND, pact=pact)
    for other in (one, three, rev):
        assert sorted(other.tau) == sorted(ref.tau)
        assert _rel_diff(ref.tau, other.tau) <= 1e-6
    assert sorted(ref.diagnostics["task_ids"]) == sorted(rev.diagnostics["task_ids"])


def test_randomized_differs_from_positional_seeding_only_by_identity(deep_models):
    """Giving explicit task ids reorders with the tasks; the seed changes the result."""
    pre, fts = deep_models
    ids = ["a", "b", "c", "d"]
    a = merge(pre, fts, "tsvm", params=RAND, task_ids=ids)
    b = merge(pre, fts[::-1], "tsvm", params=RAND, task_ids=ids[::-1])
    assert _rel_diff(a.tau, b.tau) <= 1e-6
    other_seed = merge(pre, fts, "tsvm", params={**RAND, "seed": 8}, task_ids=ids)
    assert _rel_diff(a.tau, other_seed.tau) > 1e-6


def test_fingerprint_is_content_based(deep_models):
    pre, fts = deep_models
    ids = [fingerprint(DictSource(f, "x")) for f in fts]
    assert len(set(ids)) == len(ids)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in fts[0].items()}
    assert fingerprint(DictSource(dict(fts[0]), "y")) == ids[0] and fingerprint(DictSource(half, "z")) != ids[0]


def test_randomized_streaming_equals_in_memory(deep_models, tmp_path):
    pre, fts = deep_models
    pre_path, paths = model_files(tmp_path, pre, fts)
    mem = merge(pre, fts, "pact+tsvm", params=RAND, pact=PACT)
    disk = merge_files(pre_path, paths, "pact+tsvm", params=RAND, pact=PACT)
    assert all(torch.equal(mem.tau[k], disk.tau[k]) for k in mem.tau)


def test_randomized_svd_tags_not_positions():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 30, 20, generator=g, dtype=torch.float64)
    tags = [f"m{i}" for i in range(5)]
    U, S, Vh = randomized_svd(A, 4, 3, 1, seed=1, tags=tags)
    for i in (0, 3):
        Ui, Si, Vhi = randomized_svd(A[i], 4, 3, 1, seed=1, tags=tags[i])
        assert torch.allclose(S[i], Si, rtol=1e-13) and torch.allclose(U[i].abs(), Ui.abs(), atol=1e-12)
    perm = [4, 2, 0, 1, 3]
    _, Sp, _ = randomized_svd(A[perm], 4, 3, 1, seed=1, tags=[tags[i] for i in perm])
    assert torch.allclose(Sp, S[perm], rtol=1e-13)


def test_randomized_vs_exact_on_a_decaying_spectrum():
    """Stated tolerance: spectrum exp(-i/3), rank 10, p = 10, q = 2: singular values within 1e-8
    relative, the merged TSV-M task vector within 1e-6 relative (Frobenius) of the exact one."""
    g = torch.Generator().manual_seed(3)
    m, n = 80, 60
    pre = {"w": torch.randn(m, n, generator=g)}
    fts = []
    for _ in range(6):
        U, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        fts.append({"w": pre["w"] + ((U * torch.exp(-torch.arange(n) / 3.0)) @ V.T).float()})
    A = (fts[0]["w"] - pre["w"]).double()
    _, S, _ = top_svd(A, 10, SVDOptions(svd="randomized"), tags="x")
    ref = torch.linalg.svdvals(A)[:10]
    assert torch.allclose(S, ref, rtol=1e-8)
    exact = merge(pre, fts, "tsvm").tau["w"]
    rand = merge(pre, fts, "tsvm", params={"svd": "randomized"}).tau["w"]
    assert float((rand - exact).norm() / exact.norm()) < 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["tsvm", "pact+tsvm"])
def test_cpu_and_cuda_randomized_agree(method, deep_models):
    pre, fts = deep_models
    pact = PACT if method.startswith("pact+") else None
    cpu = merge(pre, fts, method, params=RAND, pact=pact, device="cpu")
    gpu = merge(pre, fts, method, params=RAND, pact=pact, device="cuda")
    assert _rel_diff(cpu.tau, gpu.tau) <= 1e-5
