"""What the merging core offers its callers: the merged TaskVector, PACT on whole task vectors,
the layout check, the key-prefix normaliser and the conv-kernel view."""

import pytest
import torch

from pactmerge.errors import MergeError
from pactmerge.merging import (
    KeyPolicy, PACTConfig, TaskVector, as_matrix, clean_task_vectors, merge, normalize_keys, pact_filter,
)
from pactmerge.merging.sources import require_same_layout


def test_merge_result_exposes_its_task_vector(models):
    pre, fts = models
    res = merge(pre, fts, "task_arithmetic")
    tv = res.task_vector
    assert isinstance(tv, TaskVector) and sorted(tv) == sorted(res.tau)
    by_hand = sum(TaskVector.from_state_dicts(pre, f) for f in fts)
    assert all(torch.allclose(tv[k], by_hand[k], atol=1e-6) for k in tv)
    merged = tv.apply_to(pre, 0.3)
    assert all(torch.equal(merged[k], res.apply(pre, 0.3)[k]) for k in pre)


def test_clean_task_vectors_is_pact_filter_on_every_matrix_key(models):
    pre, fts = models
    tvs = [TaskVector.from_state_dicts(pre, f) for f in fts]
    cfg = PACTConfig(K=3, k=2)
    cleaned, diag = clean_task_vectors(pre, tvs, cfg)
    assert len(cleaned) == 3 and all(isinstance(c, TaskVector) for c in cleaned)
    matrix_keys = [k for k, v in pre.items() if v.is_floating_point() and v.dim() == 2]
    assert sorted(diag["keys"]) == sorted(matrix_keys)
    for key in matrix_keys:
        ref, _ = pact_filter(pre[key].double(), [tv[key].double() for tv in tvs], cfg, key)
        for c, r in zip(cleaned, ref):
            torch.testing.assert_close(c[key], r.float())
    for key in ("conv1.weight", "ln_pre.bias", "class_embedding"):  # vector keys: unchanged
        assert all(torch.equal(c[key], tv[key]) for c, tv in zip(cleaned, tvs))
    assert "num_batches_tracked" not in cleaned[0]
    assert 0 < diag["overall"]["removed_share"] < 1


def test_clean_task_vectors_K0_identity_conv_view_and_rank_clipping(models):
    pre, fts = models
    tvs = [TaskVector.from_state_dicts(pre, f) for f in fts]
    same, _ = clean_task_vectors(pre, tvs, PACTConfig(K=0, k=2))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(same, tvs) for k in a)
    conv, diag = clean_task_vectors(pre, tvs, PACTConfig(K=2, k=1, include=("conv1.*",)),
                                    key_policy=KeyPolicy(conv_as_matrix=True))
    assert list(diag["keys"]) == ["conv1.weight"] and conv[0]["conv1.weight"].shape == (12, 3, 2, 2)
    with pytest.raises(MergeError, match="k=8 is larger than min"):
        clean_task_vectors(pre, tvs, PACTConfig(K=2, k=8))
    clipped, diag = clean_task_vectors(pre, tvs, PACTConfig(K=2, k=8), clip_ranks=True)
    assert diag["keys"]["positional_embedding"][0]["k"] == 5  # min(5, 12)


def test_one_layout_check_names_every_difference():
    ref = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    other = {"a": torch.zeros(3, 3), "c": torch.zeros(1)}
    with pytest.raises(MergeError, match=r"model 2 does not match the base \(missing keys: b; unexpected keys: c; "
                                         r"different shapes: a \(3, 3\) instead of \(2, 3\)\)"):
        require_same_layout(ref, other, ref_name="the base", other_name="model 2")
    with pytest.raises(MergeError, match=r"x does not match the pre-trained model .*missing keys: b"):
        TaskVector.from_state_dicts(ref, {"a": torch.zeros(2, 3)}, name="x")
    require_same_layout(ref, {"a": torch.ones(2, 3), "b": torch.ones(4)}, ref_name="r", other_name="o")


def test_normalize_keys_and_as_matrix():
    state = {"module.visual.conv1.weight": 1, "module.visual.proj": 2, "module.token_embedding.weight": 3}
    assert normalize_keys(state) == {"visual.conv1.weight": 1, "visual.proj": 2, "token_embedding.weight": 3}
    assert normalize_keys(state, tower=True) == {"conv1.weight": 1, "proj": 2}
    assert normalize_keys({"conv1.weight": 1}, tower=True) == {"conv1.weight": 1}
    kernel = torch.arange(24.0).reshape(2, 3, 2, 2)
    assert torch.equal(as_matrix(kernel), kernel.reshape(2, 12))
    w = torch.ones(3, 4)
    assert as_matrix(w) is w


def test_pact_diagnostics_in_float64_measure_the_update_before_cleaning(models):
    # in float64 the in-place clean once overwrote the task vector its statistics were read from
    pre, fts = models
    d32 = merge(pre, fts, "pact+task_arithmetic", pact={"K": 3, "k": 2}).diagnostics["pact"]["overall"]
    d64 = merge(pre, fts, "pact+task_arithmetic", pact={"K": 3, "k": 2},
                compute_dtype=torch.float64).diagnostics["pact"]["overall"]
    assert d64["removed_share"] == pytest.approx(d32["removed_share"], rel=1e-5) and d64["removed_share"] > 0.1
    assert d64["E_in_before"] == pytest.approx(d32["E_in_before"], rel=1e-5)
