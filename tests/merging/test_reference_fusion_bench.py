"""MagMax and Consensus/TALL masks against FusionBench's own functions, when fusion_bench is importable.

fusion_bench pulls in transformers, datasets, peft and hydra, so it is no dependency of this
project; ``pip install fusion-bench`` in an environment with pactmerge runs these. The same
comparison was made once on FusionBench 0.2.33's source (magmax, TALL masks: bitwise equal;
DARE with the same masks: float32 rounding); the hand-computed cases live in
test_data_free_methods.py.
"""

import pytest
import torch

from pactmerge.merging import merge

fb_magmax = pytest.importorskip("fusion_bench.method.magmax.magmax", reason="fusion_bench is not installed")
fb_tall = pytest.importorskip("fusion_bench.method.tall_mask.utils", reason="fusion_bench is not installed")


@pytest.fixture(scope="module")
def models():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(4000, generator=g)
    taus = torch.randn(5, 4000, generator=g)
    return {"w": pre}, [{"w": pre + t} for t in taus], taus


def test_magmax_matches_fusion_bench(models):
    pre, fts, taus = models
    # the same task vectors as the merge forms (θ_t − θ0 is not bitwise the τ that made θ_t)
    ref = fb_magmax._magmax_select([{"w": f["w"] - pre["w"]} for f in fts])["w"]
    assert torch.equal(merge(pre, fts, "magmax").tau["w"], ref)


@pytest.mark.parametrize("lam,k", [(0.2, 2), (0.6, 2), (0.6, 3)])
def test_consensus_matches_fusion_bench_tall_masks(models, lam, k):
    pre, fts, taus = models
    flat_ft = torch.stack([f["w"] for f in fts])
    multi = (flat_ft - pre["w"]).sum(0)
    masks = fb_tall.generate_task_masks(flat_ft - pre["w"], flat_ft, pre["w"], tv=multi, tall_mask_lambda=lam)
    ref = (masks.float().sum(0) >= k) * multi
    assert torch.equal(merge(pre, fts, "consensus", params={"lam": lam, "k": k}).tau["w"], ref)
