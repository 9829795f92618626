"""merging.lapack: the top eigenpairs from LAPACK dsyevr, against torch.linalg.eigh and by hand."""

import pytest
import torch

from pactmerge.merging import lapack, linalg

needs_dsyevr = pytest.mark.skipif(not lapack.available(), reason="SciPy's LAPACK or threadpoolctl is not installed")


def _symmetric(n, seed=0, decay=0.05):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (Q * torch.exp(-decay * torch.arange(n, dtype=torch.float64))) @ Q.T


@needs_dsyevr
def test_diagonal_by_hand():
    lam, Q = lapack.top_eigh(torch.diag(torch.tensor([3.0, 9.0, 1.0, 7.0, 5.0], dtype=torch.float64)), 2)
    assert lam.tolist() == [7.0, 9.0]  # ascending, as eigh's last columns
    assert torch.equal(Q.abs(), torch.tensor([[0, 0], [0, 1], [0, 0], [1, 0], [0, 0]], dtype=torch.float64))


@needs_dsyevr
def test_equals_the_last_columns_of_a_full_eigh_and_reads_the_upper_triangle_only():
    G = _symmetric(120, seed=1)
    lam_ref, Q_ref = torch.linalg.eigh(G)
    garbage = torch.triu(G) + torch.tril(torch.full_like(G, 1e3), -1)  # the lower triangle must not be read
    lam, Q = lapack.top_eigh(garbage, 30)
    assert lam.shape == (30,) and Q.shape == (120, 30)
    assert torch.allclose(lam, lam_ref[-30:], rtol=1e-12, atol=0)
    # eigenvectors up to sign (the eigenvalues are distinct)
    assert torch.allclose((Q * Q_ref[:, -30:]).sum(0).abs(), torch.ones(30, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(Q.T @ Q, torch.eye(30, dtype=torch.float64), atol=1e-12)


def test_refuses_what_it_cannot_do():
    G = _symmetric(10)
    assert lapack.top_eigh(G.float(), 3) is None  # float64 only
    assert lapack.top_eigh(G, 11) is None and lapack.top_eigh(G, 0) is None
    assert lapack.top_eigh(G[:, :9].contiguous(), 3) is None  # square only


@needs_dsyevr
def test_truncated_svd_takes_the_subset_solver_and_agrees_with_the_full_eigh(monkeypatch):
    g = torch.Generator().manual_seed(2)
    n = linalg.SUBSET_MIN_SIDE
    A = torch.randn(3, 540, n, generator=g, dtype=torch.float64) * torch.logspace(0, -2, n, dtype=torch.float64)
    calls = []
    real = lapack.top_eigh
    monkeypatch.setattr(lapack, "top_eigh", lambda G, r: calls.append(r) or real(G, r))
    r = n // 4
    U, S, V = linalg.top_svd(A, r)  # a quarter of a 512 side: the subset solver, once per matrix
    assert calls == [r, r, r]
    linalg.top_svd(A, r + 1)  # over a quarter of the side: the full eigh
    linalg.top_svd(A[:, :, : n - 4], r - 1)  # a smaller side: the full eigh (MKL's is as fast there)
    assert calls == [r, r, r]
    for i in range(3):  # each matrix's bits depend neither on its batch nor on the worker threads
        u, s, v = linalg.top_svd(A[i], r)
        assert torch.equal(u, U[i]) and torch.equal(s, S[i]) and torch.equal(v, V[i])
    monkeypatch.setattr(lapack, "available", lambda: False)
    calls.clear()
    U2, S2, V2 = linalg.top_svd(A, r)
    assert calls == []
    assert torch.allclose(S, S2, rtol=1e-12, atol=0)
    assert torch.allclose((U * S.unsqueeze(-2)) @ V.mT, (U2 * S2.unsqueeze(-2)) @ V2.mT, rtol=0, atol=1e-12)


def _openblas_threads() -> dict[str, int]:
    """Each loaded OpenBLAS library's thread count."""
    from threadpoolctl import threadpool_info

    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"}


@needs_dsyevr
def test_openblas_is_held_to_one_thread_inside_and_restored_after():
    before = _openblas_threads()
    assert before  # SciPy's OpenBLAS is loaded once dsyevr is
    with lapack.single_threaded_blas():
        assert set(_openblas_threads().values()) == {1}
    assert _openblas_threads() == before
    # per_matrix's workers run under it (the truncated SVDs call dsyevr from them)
    seen = linalg.per_matrix(lambda _: set(_openblas_threads().values()), range(3))
    assert seen == [{1}, {1}, {1}]
    assert _openblas_threads() == before
