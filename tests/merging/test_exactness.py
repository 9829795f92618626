"""Exact where it is called exact: the Gram route's fallback, Iso-CTS' refusals, energy ranks."""

import logging

import pytest
import torch

from pactmerge.errors import MergeError
from pactmerge.merging import SVDOptions, merge
from pactmerge.merging import linalg
from pactmerge.merging.linalg import energy_rank, top_svd


def _orthonormal(p, q, g):
    return torch.linalg.qr(torch.randn(p, q, generator=g, dtype=torch.float64)).Q


def _spanning(m, n, lo, g):
    """A matrix with singular values log-spaced from 1 down to ``lo``."""
    d = min(m, n)
    return (_orthonormal(m, d, g) * torch.logspace(0, torch.log10(torch.tensor(lo)), d, dtype=torch.float64)) @ _orthonormal(n, d, g).T


def _polar_ref(X):
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return U @ Vh


def _iso_cts_ref(taus, f):
    """Iso-CTS with float64 LAPACK SVDs only."""
    T, (m, n) = len(taus), taus[0].shape
    d = min(m, n)
    s = round(d * (1 - f) / T)
    c = d - T * s
    U, S, Vh = torch.linalg.svd(sum(taus), full_matrices=False)
    Us, Ss, Vs = [U[:, :c]], [S[:c]], [Vh[:c].T]
    for t in taus:
        r = t - U[:, :c] @ (U[:, :c].T @ t)
        u, sv, vh = torch.linalg.svd(r, full_matrices=False)
        Us.append(u[:, :s]), Ss.append(sv[:s]), Vs.append(vh[:s].T)
    S = torch.cat(Ss)
    return S.mean() * _polar_ref(torch.cat(Us, 1)) @ _polar_ref(torch.cat(Vs, 1)).T


def _iso_cts_case():
    g = torch.Generator().manual_seed(0)
    m, n = 40, 30
    pre = {"w": torch.randn(m, n, generator=g, dtype=torch.float64)}
    taus = [_spanning(m, n, 2e-6, g) for _ in range(3)]
    return pre, taus, [{"w": pre["w"] + t} for t in taus]


def test_iso_cts_with_singular_values_spanning_1e6_matches_float64_svd():
    pre, taus, fts = _iso_cts_case()
    ref = _iso_cts_ref([(f["w"] - pre["w"]) for f in fts], 0.5)
    got = merge(pre, fts, "iso_cts", params={"f": 0.5}, compute_dtype=torch.float64).tau["w"].double()
    err = float((got - ref).norm() / ref.norm())
    assert err < 1e-6, err


def test_truncated_svd_falls_back_where_the_gram_route_is_inaccurate(monkeypatch):
    """Singular values down to 2e-6: the fallback gives them to 1e-12; the Gram route alone
    (fallback disabled) is off by ~2e-7 relative in the weakest ones, so the test can fail."""
    g = torch.Generator().manual_seed(1)
    A = _spanning(50, 40, 2e-6, g)
    ref = torch.linalg.svdvals(A)
    U, S, V = top_svd(A, 40)
    assert float(((S - ref) / ref).abs().max()) < 1e-12
    assert float(((U * S) @ V.T - A).norm() / A.norm()) < 1e-12
    monkeypatch.setattr(linalg, "GRAM_FALLBACK", 0.0)
    S_gram = top_svd(A, 40)[1]
    assert float(((S_gram - ref) / ref).abs().max()) > 1e-8


def test_iso_cts_refuses_a_negative_common_rank():
    g = torch.Generator().manual_seed(0)
    pre = {"blk.w": torch.randn(7, 9, generator=g)}
    fts = [{"blk.w": pre["blk.w"] + 0.1 * torch.randn(7, 9, generator=g)} for _ in range(2)]
    with pytest.raises(MergeError) as exc:
        merge(pre, fts, "iso_cts", params={"f": 0.0})
    msg = str(exc.value)
    assert "f=0.0" in msg and "T=2" in msg and "7x9" in msg and "'blk.w'" in msg and "c=-1" in msg


def test_iso_cts_without_task_room_warns_and_records(caplog):
    g = torch.Generator().manual_seed(0)
    pre = {"small": torch.randn(5, 8, generator=g), "big": torch.randn(40, 40, generator=g)}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in pre.items()} for _ in range(4)]
    with caplog.at_level(logging.WARNING, logger="pactmerge.merging"):
        res = merge(pre, fts, "iso_cts")  # small: s = round(5 * 0.2 / 4) = 0
    assert res.diagnostics["iso_cts_no_task_subspace"] == ["small"]
    assert "'small'" in caplog.text and "merged as Iso-C" in caplog.text


def test_tsvm_with_more_tasks_than_min_dim_warns_and_records(caplog):
    g = torch.Generator().manual_seed(0)
    pre = {"thin": torch.randn(3, 20, generator=g), "wide": torch.randn(20, 20, generator=g)}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in pre.items()} for _ in range(4)]
    with caplog.at_level(logging.WARNING, logger="pactmerge.merging"):
        res = merge(pre, fts, "tsvm")
    assert res.diagnostics["tsvm_zero_rank_keys"] == ["thin"] and not res.tau["thin"].any()
    assert "'thin'" in caplog.text and "r_t = 0" in caplog.text


def _clear_spectrum(B, m, n, cut, g):
    """B matrices: `cut` singular values near 1, the rest near 1e-3 (a clear cut)."""
    d = min(m, n)
    sv = torch.cat([torch.linspace(1.0, 0.5, cut), torch.full((d - cut,), 1e-3)]).double()
    return torch.stack([(_orthonormal(m, d, g) * sv) @ _orthonormal(n, d, g).T for _ in range(B)])


def test_energy_rank_randomized_equals_exact_on_a_clear_spectrum():
    g = torch.Generator().manual_seed(2)
    A = torch.cat([_clear_spectrum(2, 120, 100, 5, g), _clear_spectrum(2, 120, 100, 40, g)])
    exact = energy_rank(A, 0.99)
    rand = energy_rank(A, 0.99, SVDOptions(svd="randomized"), tags=[f"m{i}" for i in range(4)])
    assert exact.tolist() == rand.tolist() == [5, 5, 40, 40]
    assert energy_rank(torch.zeros(1, 10, 10), 0.9, SVDOptions(svd="randomized")).tolist() == [0]


def test_pact_energy_mode_randomized_picks_the_exact_ranks():
    g = torch.Generator().manual_seed(3)
    w0 = _clear_spectrum(1, 120, 100, 6, g)[0].float()
    taus = _clear_spectrum(3, 120, 100, 4, g).float() * 0.1
    pre, fts = {"w": w0}, [{"w": w0 + t} for t in taus]
    pact = {"rank_mode": "energy", "tau_pre": 0.98, "tau_task": 0.98, "guard": 1.0}
    ex = merge(pre, fts, "pact+task_arithmetic", pact=pact)
    rd = merge(pre, fts, "pact+task_arithmetic", params={"svd": "randomized"}, pact=pact)
    rows = lambda r: [(d["K"], d["k"]) for d in r.diagnostics["pact"]["keys"]["w"]]
    assert rows(ex) == rows(rd) == [(6, 4)] * 3
