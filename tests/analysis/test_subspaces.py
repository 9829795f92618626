"""LBW subspaces and metrics: hand-computed cases and a plain projector reference."""

import numpy as np
import pytest
import torch

from pactmerge.analysis.subspaces import (
    energy_share,
    interference_matrix,
    key_spaces,
    orth,
    similarity_matrix,
    subspace_similarity,
    top_right_vectors,
)


def e(n, *idx):
    m = torch.zeros(n, len(idx), dtype=torch.float64)
    for c, i in enumerate(idx):
        m[i, c] = 1.0
    return m


def test_top_right_vectors_of_a_diagonal():
    w = torch.diag(torch.tensor([1.0, 5.0, 3.0, 0.0]))
    v = top_right_vectors(w, 2)
    assert v.shape == (4, 2)
    torch.testing.assert_close(v.abs(), e(4, 1, 2))
    # the zero singular value is not a direction of the core
    assert top_right_vectors(w, 10).shape == (4, 3)
    assert top_right_vectors(torch.zeros(3, 4), 2).shape == (4, 0)


def test_orth_is_rank_revealing():
    a = torch.randn(8, 2, dtype=torch.float64)
    q = orth(torch.cat([a, a @ torch.randn(2, 3, dtype=torch.float64)], dim=1))  # rank 2, 5 columns
    assert q.shape == (8, 2)
    torch.testing.assert_close(q.T @ q, torch.eye(2, dtype=torch.float64))
    assert orth(torch.zeros(5, 3)).shape == (5, 0)


def test_energy_share_hand_case():
    tau = torch.tensor([[3.0, 4.0, 0.0]])  # ‖τ‖² = 25; 9 of it along e0
    assert energy_share(tau, e(3, 0)) == pytest.approx(9 / 25)
    assert energy_share(tau, e(3, 0, 1)) == pytest.approx(1.0)
    assert energy_share(torch.zeros(1, 3), e(3, 0)) == 0.0


def test_similarity_bounds():
    assert subspace_similarity(e(6, 0, 1), e(6, 1, 0)) == pytest.approx(1.0)
    assert subspace_similarity(e(6, 0, 1), e(6, 2, 3)) == pytest.approx(0.0)
    assert subspace_similarity(e(6, 0, 1), e(6, 1, 2)) == pytest.approx(0.5)


def test_interference_hand_case():
    # W0 core (K=3) = e0, e1, e2; task 0 updates along e0 only, so it relies on e1 and e2
    w0 = torch.diag(torch.tensor([10.0, 9.0, 8.0, 1.0, 1.0, 1.0]))
    u = torch.randn(6, 1, dtype=torch.float64)
    tau0 = u @ e(6, 0).T
    tau1 = u @ (e(6, 1).T + e(6, 4).T)  # half into task 0's reliance space, half outside the core
    spaces = key_spaces(w0, [tau0, tau1], K=3, k=1)
    torch.testing.assert_close(spaces.reliance[0] @ spaces.reliance[0].T, (e(6, 1, 2) @ e(6, 1, 2).T))
    inf = interference_matrix(spaces)
    assert inf[0][1] == pytest.approx(0.5)
    assert inf[0][0] == pytest.approx(0.0, abs=1e-12)  # a task never writes into what it leaves alone (rank-1 τ)
    # task 1's core is (e1 + e4)/√2: its reliance space is e0, e2 and the part of e1 orthogonal to it
    assert inf[1][0] == pytest.approx(1.0)
    sim = similarity_matrix(spaces)
    assert sim[0][1] == pytest.approx(0.0) and sim[0][0] == pytest.approx(1.0)


def test_against_projector_reference():
    g = torch.Generator().manual_seed(0)
    m, n, K, k = 12, 10, 4, 2
    w0 = torch.randn(m, n, generator=g, dtype=torch.float64)
    taus = [torch.randn(m, n, generator=g, dtype=torch.float64) for _ in range(3)]
    spaces = key_spaces(w0, taus, K, k)
    inf = interference_matrix(spaces)
    W0, T = w0.numpy(), [t.numpy() for t in taus]
    v0 = np.linalg.svd(W0)[2][:K].T
    for i in range(3):
        vi = np.linalg.svd(T[i])[2][:k].T
        a = (np.eye(n) - vi @ vi.T) @ v0
        proj = a @ np.linalg.pinv(a)  # orthogonal projector onto span(a)
        for j in range(3):
            ref = np.linalg.norm(T[j] @ proj) ** 2 / np.linalg.norm(T[j]) ** 2
            assert inf[i][j] == pytest.approx(ref, rel=1e-9)
        assert spaces.reliance[i].shape[1] == K  # generic position: no direction lost
