"""The merge stage's planning (parameter namespaces, ``methods: all``) and its α scoring."""

from __future__ import annotations

import pytest

from pactmerge.merging import available_methods
from pactmerge.pipeline.config import MergeConfig, load_config
from pactmerge.pipeline.merge_stage import PlannedMerge, choose_alpha, expand_methods, plan_merges, resolved_params


def test_methods_all_is_every_base_method():
    assert expand_methods("all") == [m for m in available_methods() if "+" not in m]
    assert expand_methods(["tsvm", "all"])[0] == "tsvm" and len(expand_methods(["tsvm", "all"])) == 6


def test_parameters_reach_the_namespace_they_name():
    cfg = MergeConfig(methods=["ties", "tsvm"], pact=["none", "exact", "randomized"],
                      params={"oversample": 4}, pact_params={"K": 3, "k": 2},
                      method_params={"ties": {"k": 10.0}, "pact+tsvm": {"protect": "self"}})
    plan = {p.id: p for p in plan_merges(cfg)}
    assert list(plan) == ["ties", "tsvm", "pact+ties", "pact+tsvm", "pact+ties-rsvd", "pact+tsvm-rsvd"]
    assert plan["ties"] == PlannedMerge("ties", {"oversample": 4, "k": 10.0}, None, "exact")
    # TIES' k reaches ties and pact+ties alike; PACT's k reaches PACT only
    assert plan["pact+ties"].params == {"oversample": 4, "k": 10.0, "svd": "exact"}
    assert plan["pact+ties"].pact == {"K": 3, "k": 2}
    # pact+tsvm's own PACT key goes to PACT, and only there
    assert plan["pact+tsvm"].pact == {"K": 3, "k": 2, "protect": "self"}
    assert plan["pact+ties"].pact.get("protect") is None and plan["tsvm"].pact is None
    resolved = resolved_params(plan["pact+ties-rsvd"])
    assert resolved["params"]["k"] == 10.0 and resolved["params"]["svd"] == "randomized"
    assert resolved["pact_params"]["k"] == 2 and resolved["pact_params"]["K"] == 3


def test_config_says_methods_all(tmp_path):
    cfg = load_config(None, ["merge.methods=all", f"output_dir={tmp_path}"])
    assert len(plan_merges(cfg.merge)) == 6 * len(cfg.merge.pact)


def test_choose_alpha_confirms_the_subset_winners_on_the_full_split():
    grid = [round(0.1 * i, 1) for i in range(21)]
    sub_calls, full_calls = [], []

    def subset(a):  # noisy: peaks at 0.9
        sub_calls.append(a)
        return -abs(a - 0.9)

    def full(a):  # the truth: 0.8 is best
        full_calls.append(a)
        return -abs(a - 0.8)

    choice = choose_alpha(full, grid, "coarse_to_fine", subset=subset, confirm=3, subset_size=128)
    assert sorted(full_calls) == [0.8, 0.9, 1.0]  # the subset's best three
    assert choice.alpha == 0.8 and choice.val_score == 0.0
    assert choice.search.evaluations == len(sub_calls) < len(grid)
    rec = choice.record("coarse_to_fine")
    assert rec["subset_per_task"] == 128 and set(rec["confirmed"]) == {"0.8", "0.9", "1.0"}
    # without a subset (or a fixed α) the search runs on the full split alone
    assert choose_alpha(full, grid, "fixed", subset=subset, fixed=0.3).alpha == 0.3


@pytest.mark.slow
def test_full_score_from_subset_counts_equals_a_full_evaluation(tiny_config):
    from pactmerge.pipeline import stages
    from pactmerge.pipeline.merge_stage import _Scorer
    from pactmerge.pipeline.study import open_study

    ctx = open_study(load_config(tiny_config()))
    stages.prepare(ctx)
    state = ctx.store.load_state("pretrained")
    scorer = _Scorer(ctx, subset_size=10)
    assert all(len(scorer.subsets[t]) + len(scorer.rests[t]) == len(dm.datasets["val"])
               for t, dm in scorer.dms.items())
    scorer.subset_score(0.5, state)
    accs = scorer.accuracies(state, "val", scorer.dms)
    assert scorer.full_score(0.5, state) == sum(accs.values()) / len(accs)
