"""PACTCache: PACT computed once for every pact+ merge of the same inputs, results unchanged."""

import pytest
import torch

from pactmerge.merging import PACTCache, merge, merge_files

from fixtures import model_files

PACT = {"K": 2, "k": 1}


@pytest.fixture
def files(models, tmp_path):
    pre, fts = models
    return model_files(tmp_path, pre, fts)


def _same(a, b):
    return list(a.tau) == list(b.tau) and all(torch.equal(a.tau[k], b.tau[k]) for k in a.tau)


def _pact_keys(res):
    return len(res.diagnostics["pact"]["keys"])


def test_pact_runs_once_across_merges_and_results_are_bitwise_identical(files):
    pre, fts = files
    cache = PACTCache()
    methods = ["pact+ties", "pact+tsvm", "pact+iso_c", "pact+task_arithmetic"]
    cached = [merge_files(pre, fts, m, pact=PACT, pact_cache=cache) for m in methods]
    n = _pact_keys(cached[0])
    first = cached[0].diagnostics["pact_cache"]
    assert first["computed_keys"] == n and first["served_keys"] > 0  # TIES' pre-passes reuse PACT
    for res in cached[1:]:
        assert res.diagnostics["pact_cache"] == {"computed_keys": 0, "served_keys": n}
        assert "pact" not in res.timings  # no PACT computation at all
    assert cache.stats["computed_keys"] == n and len(cache) == n
    for m, res in zip(methods, cached):
        plain = merge_files(pre, fts, m, pact=PACT)
        assert _same(res, plain), m
        assert res.diagnostics["pact"] == plain.diagnostics["pact"]


def test_streaming_pact_ties_without_a_cache_computes_pact_once_per_key(files):
    pre, fts = files
    res = merge_files(pre, fts, "pact+ties", pact=PACT)
    assert res.diagnostics["pact_cache"]["computed_keys"] == _pact_keys(res)


def test_other_config_options_or_inputs_are_recomputed(files, models):
    pre, fts = files
    cache = PACTCache()
    merge_files(pre, fts, "pact+tsvm", pact=PACT, pact_cache=cache)
    n = len(cache)
    for kwargs in ({"pact": {"K": 3, "k": 1}}, {"pact": PACT, "params": {"svd": "randomized"}}):
        res = merge_files(pre, fts, "pact+tsvm", pact_cache=cache, **kwargs)
        assert res.diagnostics["pact_cache"]["computed_keys"] == n
    res = merge_files(pre, fts[::-1], "pact+tsvm", pact=PACT, pact_cache=cache)  # other order
    assert res.diagnostics["pact_cache"]["computed_keys"] == n
    # in memory: keyed by the state dicts' identity; an in-place change is a different input
    mpre, mfts = models
    a = merge(mpre, mfts, "pact+ta", pact=PACT, pact_cache=cache)
    b = merge(mpre, mfts, "pact+tsvm", pact=PACT, pact_cache=cache)
    assert a.diagnostics["pact_cache"]["computed_keys"] == n and b.diagnostics["pact_cache"]["computed_keys"] == 0
    mfts[0]["proj"].mul_(1.5)
    c = merge(mpre, mfts, "pact+tsvm", pact=PACT, pact_cache=cache)
    assert c.diagnostics["pact_cache"]["computed_keys"] == n
    assert _same(c, merge(mpre, mfts, "pact+tsvm", pact=PACT))


def test_budget_bounds_memory_and_recomputes_beyond_it(files):
    pre, fts = files
    cache = PACTCache(max_bytes=3 * 36 * 12 * 4 * 2)  # room for two in_proj keys of 3 tasks
    a = merge_files(pre, fts, "pact+tsvm", pact=PACT, pact_cache=cache)
    assert cache.bytes <= cache.max_bytes and 0 < len(cache) < _pact_keys(a)
    b = merge_files(pre, fts, "pact+iso_c", pact=PACT, pact_cache=cache)
    served = b.diagnostics["pact_cache"]["served_keys"]
    assert 0 < served < _pact_keys(b) and b.diagnostics["pact_cache"]["computed_keys"] == _pact_keys(b) - served
    assert _same(b, merge_files(pre, fts, "pact+iso_c", pact=PACT))
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0
