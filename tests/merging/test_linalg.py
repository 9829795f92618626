"""Linear algebra helpers against plain float64 LAPACK decompositions."""

import torch

from pactmerge.merging import orth, randomized_svd
from pactmerge.merging.linalg import polar, polar_and_singular_values, top_svd


def _decaying(m, n, rate, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, d, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    return (U * torch.exp(-torch.arange(d, dtype=torch.float64) * rate)) @ V.T


def _subspace_gap(A, B):
    """Largest principal-angle sine between the column spaces of orthonormal A and B."""
    return float(torch.linalg.matrix_norm(A - B @ (B.T @ A), ord=2))


def test_randomized_svd_matches_exact_on_decaying_spectra():
    # tolerance: with spectrum decay exp(-i/4), 10 oversamples and 2 power iterations the top-8
    # singular values are within 1e-6 relative and the subspace within 1e-4
    A = _decaying(200, 120, 0.25).float()
    U, S, Vh = randomized_svd(A, 8, oversample=10, power_iters=2, seed=0)
    ref = torch.linalg.svd(A.double(), full_matrices=False)
    assert torch.allclose(S.double(), ref.S[:8], rtol=1e-5)
    assert _subspace_gap(ref.U[:, :8], U.double()) < 1e-4
    assert _subspace_gap(ref.Vh[:8].T, Vh.T.double()) < 1e-4
    U2, S2, Vh2 = randomized_svd(A, 8, seed=0)
    assert torch.equal(U, U2) and torch.equal(S, S2)  # seeded: deterministic


def test_exact_top_svd_matches_lapack_tall_and_wide():
    for shape in [(50, 30), (30, 50)]:
        A = _decaying(*shape, 0.1, seed=1).float()
        U, S, V = top_svd(A, 10)
        ref = torch.linalg.svd(A.double(), full_matrices=False)
        assert torch.allclose(S, ref.S[:10], rtol=1e-6)
        assert _subspace_gap(ref.U[:, :10], U) < 1e-6 and _subspace_gap(ref.Vh[:10].T, V) < 1e-6
        assert torch.allclose((U * S) @ V.T, (ref.U[:, :10] * ref.S[:10]) @ ref.Vh[:10], atol=1e-6)


def test_top_svd_rank_deficient_returns_zero_columns():
    A = torch.randn(20, 3, dtype=torch.float64) @ torch.randn(3, 10, dtype=torch.float64)
    U, S, V = top_svd(A, 6)
    assert (S[3:] == 0).all() and (U[:, 3:] == 0).all() and (V[:, 3:] == 0).all()
    assert torch.allclose((U * S) @ V.T, A, atol=1e-10)


def test_polar_matches_svd_and_handles_repeated_columns():
    X = torch.randn(30, 12, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(X, full_matrices=False)
    P, S = polar_and_singular_values(X)
    assert torch.allclose(P, u @ vh, atol=1e-10) and torch.allclose(S, s, atol=1e-10)
    assert torch.allclose(polar(X.T), (u @ vh).T, atol=1e-10)
    Q, _ = torch.linalg.qr(torch.randn(30, 4, dtype=torch.float64))
    P = polar(torch.cat([Q, Q], 1))  # exactly rank-deficient: no invented completion
    assert torch.allclose(P, torch.cat([Q, Q], 1) / 2**0.5, atol=1e-10)


def test_polar_near_dependent_columns_fall_back_to_svd():
    Q, _ = torch.linalg.qr(torch.randn(30, 5, dtype=torch.float64))
    X = torch.cat([Q[:, :4], Q[:, :1] + 1e-5 * Q[:, 4:5]], 1)  # sigma_min ~ 7e-6
    u, _, vh = torch.linalg.svd(X, full_matrices=False)
    assert torch.allclose(polar(X), u @ vh, atol=1e-8)


def test_orth_is_rank_revealing():
    Q, _ = torch.linalg.qr(torch.randn(40, 3, dtype=torch.float64))
    A = torch.cat([Q, Q @ torch.randn(3, 5, dtype=torch.float64), torch.zeros(40, 2, dtype=torch.float64)], 1)
    B = orth(A)
    assert B.shape == (40, 3)
    assert torch.allclose(B.T @ B, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert _subspace_gap(Q, B) < 1e-10
    assert orth(torch.zeros(10, 4)).shape == (10, 0)
    # plain QR of the same wide concatenation returns 8 "orthonormal" columns, 5 of them spurious
    assert torch.linalg.qr(A[:, :8]).Q.shape[1] == 8


def test_per_matrix_keeps_order_runs_single_threaded_workers_and_restores_threads():
    from pactmerge.merging.linalg import per_matrix

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = per_matrix(lambda i: (i, torch.get_num_threads()), range(5))
        assert seen == [(i, 1) for i in range(5)]
        assert torch.get_num_threads() == 2
        assert per_matrix(lambda i: torch.get_num_threads(), [0]) == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_batched_decompositions_equal_one_matrix_at_a_time_bitwise():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        A = torch.stack([_decaying(60, 40, 0.1, seed=s) for s in range(3)]).float()
        U, S, V = top_svd(A, 8)
        P, Sp = polar_and_singular_values(A)
        for i in range(3):
            u, s, v = top_svd(A[i], 8)
            assert torch.equal(U[i], u) and torch.equal(S[i], s) and torch.equal(V[i], v)
            p, sp = polar_and_singular_values(A[i])
            assert torch.equal(P[i], p) and torch.equal(Sp[i], sp)
    finally:
        torch.set_num_threads(before)
