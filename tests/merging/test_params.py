"""Parameter parsing: the SVD options' bounds, the device resolver."""

import pytest
import torch

from pactmerge.errors import MergeError
from pactmerge.merging import PACTConfig, alpha_grid, available_methods, get_method, merge, resolve_device


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"power_iters": 10**8}, "power_iters must be in"),
        ({"power_iters": -1}, "power_iters must be in"),
        ({"oversample": -2}, "oversample must be in"),
        ({"seed": 2**64}, "seed must be in"),
        ({"seed": -1}, "seed must be in"),
        ({"power_iters": "1e8"}, "parameter 'power_iters': expects an integer"),
    ],
)
def test_svd_options_are_bounded(models, params, needle):
    pre, fts = models
    with pytest.raises(MergeError, match=needle):
        merge(pre, fts, "tsvm", params={"svd": "randomized", **params})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu0", "meta"):
        with pytest.raises(MergeError, match=repr(bad)):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(MergeError, match="CUDA is not available"):
            resolve_device("cuda")


def _nonzeros(res) -> int:
    return sum(int((v != 0).sum()) for v in res.tau.values())


def test_pact_ties_keeps_ties_default_share_whatever_pact_k(models):
    """One task: TIES' merged vector is its trimmed vector, so its non-zeros are TIES' share."""
    pre, fts = models
    total = sum(v.numel() for v in pre.values() if v.is_floating_point())
    expected = int(total * 20.0 / 100) + 1  # entries with |x| >= the (D - int(D k/100))-th smallest
    ties = merge(pre, fts[:1], "ties")
    assert _nonzeros(ties) == expected
    for pact in ({"k": 4, "K": 3, "protect": "self"}, {"k": 1, "K": 2, "protect": "self"}):
        res = merge(pre, fts[:1], "pact+ties", pact=pact)
        assert _nonzeros(res) == expected, pact
        assert res.params["k"] == 20.0 and res.pact_params["k"] == pact["k"]
        assert not torch.equal(res.tau["proj"], ties.tau["proj"])  # PACT did act
    # TIES' k is read from params by both ties and pact+ties
    four = merge(pre, fts[:1], "pact+ties", params={"k": 4.0}, pact={"K": 2, "k": 1, "protect": "self"})
    assert _nonzeros(four) == int(total * 4.0 / 100) + 1 and four.pact_params["k"] == 1


def test_pact_namespace_errors(models):
    pre, fts = models
    with pytest.raises(MergeError, match=r"parameter 'K' is a PACT parameter.*put it under pact"):
        merge(pre, fts, "pact+tsvm", params={"K": 3})
    with pytest.raises(MergeError, match=r"parameter 'protect' is a PACT parameter.*put it under pact"):
        merge(pre, fts, "pact+ties", params={"protect": "self"})
    with pytest.raises(MergeError, match=r"'K' is a PACT parameter.*pact\+tsvm"):
        merge(pre, fts, "tsvm", params={"K": 3})
    with pytest.raises(MergeError, match="has no PACT step"):
        merge(pre, fts, "tsvm", pact={"K": 3})
    with pytest.raises(MergeError, match="has no PACT step"):
        merge(pre, fts, "ties", pact=PACTConfig())
    with pytest.raises(MergeError, match="given twice"):
        merge(pre, fts, "pact+tsvm", params={"pact": {"K": 2}}, pact={"K": 2})
    with pytest.raises(MergeError, match=r"PACT: unknown parameter 'svd'; valid parameters are: .*K"):
        merge(pre, fts, "pact+tsvm", pact={"svd": "randomized"})
    with pytest.raises(MergeError, match=r"PACT: K and k must be >= 0"):
        merge(pre, fts, "pact+tsvm", pact=PACTConfig(K=-1))
    assert merge(pre, fts, "tsvm", pact={}).pact_params is None  # an empty mapping is no PACT parameter


def test_pact_forms_are_equivalent(models):
    pre, fts = models
    a = merge(pre, fts, "pact+tsvm", pact={"K": 2, "k": 1})
    b = merge(pre, fts, "pact+tsvm", params={"pact": {"K": 2, "k": 1}})
    c = merge(pre, fts, "pact+tsvm", pact=PACTConfig(K=2, k=1))
    assert a.pact_params == b.pact_params == c.pact_params
    assert all(torch.equal(a.tau[k], b.tau[k]) and torch.equal(a.tau[k], c.tau[k]) for k in a.tau)
    assert set(a.params) == {"svd", "oversample", "power_iters", "seed"}


def test_pact_name_filters(models):
    pre, fts = models
    res = merge(pre, fts, "pact+task_arithmetic", pact={"K": 2, "k": 1, "include": ["proj", "*.c_fc.weight"],
                                                         "exclude": ["*.1.mlp.*"]})
    assert sorted(res.diagnostics["pact"]["keys"]) == ["proj", "transformer.resblocks.0.mlp.c_fc.weight"]


def test_alpha_grid_is_a_method_field():
    for name in available_methods():
        spec = get_method(name)
        assert isinstance(spec.alpha_grid, tuple) and spec.alpha_grid
        assert alpha_grid(name) == list(spec.alpha_grid)
    assert alpha_grid("pact+ties") == alpha_grid("ties") == [round(0.05 * i, 10) for i in range(1, 21)]
    assert alpha_grid("pact+tsvm") == [round(0.1 * i, 10) for i in range(21)]
    assert alpha_grid("weight_averaging") == [1.0]
