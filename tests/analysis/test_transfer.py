"""Task-vector transfer: the plain sum against a float64 reference, PACT against the target, refusals."""

import pytest
import torch

from pactmerge.analysis.transfer import TransferConfig, task_vector, transfer
from pactmerge.errors import ConfigError, MergeError
from pactmerge.merging import PACTConfig, pact_filter


def state(gen, dtype=torch.float32):
    return {
        "a.weight": torch.randn(24, 20, generator=gen).to(dtype),
        "a.bias": torch.randn(24, generator=gen).to(dtype),
        "conv.weight": torch.randn(8, 3, 2, 2, generator=gen).to(dtype),
        "steps": torch.tensor(7),
    }


@pytest.fixture
def setup():
    gen = torch.Generator().manual_seed(0)
    pre = state(gen)
    ft = {t: {k: (v + 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v) for k, v in pre.items()}
          for t in ("x", "y")}
    target = state(gen, torch.float16)
    target["steps"] = torch.tensor(3)
    return pre, ft, target


def test_plain_sum_matches_reference(setup):
    pre, ft, target = setup
    tvs = {t: task_vector(ft[t], pre, name=t) for t in ft}
    assert "steps" not in tvs["x"] and tvs["x"]["a.weight"].dtype == torch.float32
    out, diag = transfer(target, tvs, TransferConfig(alpha=0.7))
    for k in ("a.weight", "a.bias", "conv.weight"):
        ref = target[k].double() + 0.7 * sum(ft[t][k].double() - pre[k].double() for t in ft)
        assert out[k].dtype == torch.float16
        torch.testing.assert_close(out[k], ref.half())
    assert out["steps"].item() == 3  # integer buffers come from the target
    assert diag == {"alpha": 0.7, "tasks": ["x", "y"], "pact": False}


def test_pact_cleans_against_the_target(setup):
    pre, ft, target = setup
    target = {k: (v.float() if v.is_floating_point() else v) for k, v in target.items()}
    tvs = {t: task_vector(ft[t], pre, name=t) for t in ft}
    out, diag = transfer(target, tvs, TransferConfig(alpha=1.0, pact=True, pact_params={"K": 4, "k": 2}))
    cleaned, _ = pact_filter(target["a.weight"].double(), [tvs[t]["a.weight"].double() for t in ft], PACTConfig(K=4, k=2))
    ref = target["a.weight"].double() + sum(cleaned)
    torch.testing.assert_close(out["a.weight"], ref.float())
    # vectors and (by default) conv kernels are added unchanged
    torch.testing.assert_close(out["a.bias"], target["a.bias"] + tvs["x"]["a.bias"] + tvs["y"]["a.bias"])
    torch.testing.assert_close(out["conv.weight"], target["conv.weight"] + tvs["x"]["conv.weight"] + tvs["y"]["conv.weight"])
    assert set(diag["removed_share_per_key"]) == {"a.weight"}
    assert 0.0 < diag["removed_share"]["x"] < 1.0


def test_pact_on_conv_as_matrix(setup):
    pre, ft, target = setup
    tvs = {"x": task_vector(ft["x"], pre, name="x")}
    out, diag = transfer(target, tvs, TransferConfig(pact=True, conv_as_matrix=True, pact_params={"K": 2, "k": 1}))
    assert set(diag["removed_share_per_key"]) == {"a.weight", "conv.weight"}
    assert out["conv.weight"].shape == target["conv.weight"].shape


def test_differing_keys_refused(setup):
    pre, ft, target = setup
    bad_ft = dict(ft["x"])
    bad_ft["a.weight"] = torch.zeros(24, 21)
    with pytest.raises(MergeError, match=r"a\.weight \(24, 21\) instead of \(24, 20\)"):
        task_vector(bad_ft, pre, name="x")
    tv = task_vector(ft["x"], pre, name="x")
    other_target = {k: v for k, v in target.items() if k != "a.bias"}
    other_target["b.bias"] = torch.zeros(3)
    with pytest.raises(MergeError, match=r"task vector 'x' does not match the merge.*missing keys: b\.bias.*unexpected keys: a\.bias"):
        transfer(other_target, {"x": tv}, TransferConfig(), target_name="the merge")
    with pytest.raises(ConfigError, match="at least one task vector"):
        transfer(target, {}, TransferConfig())
