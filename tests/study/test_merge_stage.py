"""The merge stage's planning (parameter namespaces, ``methods: all``), its α search on validation
data and the evaluation path it shares with the evaluate stage (predictions per example)."""

from __future__ import annotations

import pytest
import torch

from pactmerge.merging import available_methods
from pactmerge.pipeline.config import MergeConfig, load_config
from pactmerge.pipeline.merge_stage import PlannedMerge, expand_methods, plan_merges, resolved_params


def test_methods_all_is_every_base_method():
    assert expand_methods("all") == [m for m in available_methods() if "+" not in m]
    bases = [m for m in available_methods() if "+" not in m]
    assert expand_methods(["tsvm", "all"])[0] == "tsvm" and len(expand_methods(["tsvm", "all"])) == len(bases)


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
    assert len(plan_merges(cfg.merge)) == len(expand_methods("all")) * len(cfg.merge.pact)


def test_predictions_round_trip_as_int16_per_task(tmp_path):
    import numpy as np

    from pactmerge.pipeline.evaluate import accuracy, load_predictions, predictions_path, save_predictions

    preds = {"mnist": (np.array([3, 1, 4, 1]), np.array([3, 1, 5, 9])), "faces": (np.array([0]), np.array([0]))}
    path = save_predictions(tmp_path, "merged/pact+tsvm-rsvd", preds)
    assert path == predictions_path(tmp_path, "merged/pact+tsvm-rsvd") == tmp_path / "predictions" / "merged__pact+tsvm-rsvd.npz"
    back = load_predictions(tmp_path, "merged/pact+tsvm-rsvd")
    assert set(back) == {"mnist", "faces"}
    assert back["mnist"][0].dtype == np.int16 and back["mnist"][0].tolist() == [3, 1, 4, 1]
    assert back["mnist"][1].tolist() == [3, 1, 5, 9] and accuracy(*back["mnist"]) == 0.5
    with pytest.raises(FileNotFoundError, match="pactmerge evaluate"):
        load_predictions(tmp_path, "joint")


@pytest.mark.slow
def test_merges_are_searched_on_validation_and_evaluated_by_the_evaluate_stage(tiny_config, monkeypatch):
    import numpy as np

    from pactmerge.pipeline import stages
    from pactmerge.pipeline.evaluate import Evaluator, accuracy, evaluate_encoder, load_predictions
    from pactmerge.pipeline.merge_stage import run_merge_stage
    from pactmerge.pipeline.study import open_study

    ctx = open_study(load_config(tiny_config(**{"comparisons__joint": False, "comparisons__sequential": False})))
    stages.prepare(ctx)
    for t in ctx.task_keys:
        stages.finetune_individual(ctx, t)
    # the cached evaluation path gives the data modules' own answer
    state = ctx.store.load_state("finetuned/digits")
    loaded = ctx.loaded
    direct = evaluate_encoder(loaded.encoder, state, ctx.heads(), ctx.datamodules(), split="val",
                              logit_scale=loaded.logit_scale, device="cpu", precision=ctx.evaluator().precision)
    assert ctx.accuracies(state, split="val") == direct == ctx.accuracies(state, split="val")
    streamed = Evaluator(ctx, cache_bytes=0)  # nothing kept: streamed from the data modules
    assert streamed.accuracies(state, split="val") == direct
    for t in ctx.task_keys:  # pooled and streamed inputs hold the same examples
        for subset, complement in ((None, False), (20, False), (20, True)):
            assert streamed.count(t, "val", subset, complement) == ctx.evaluator().count(t, "val", subset, complement)
        assert ctx.evaluator().count(t, "val", 20) + ctx.evaluator().count(t, "val", 20, True) == \
            ctx.evaluator().count(t, "val")

    from pactmerge.pipeline import merge_stage

    monkeypatch.setattr(merge_stage, "ALPHA_SUBSET", 20)  # first pass on 20 of each task's 48 examples
    results = run_merge_stage(ctx)
    assert set(results) == {p.id for p in plan_merges(ctx.cfg.merge)}
    for mid, entry in results.items():
        search = entry["alpha_search"]
        assert entry["alpha"] == search["chosen"] and str(entry["alpha"]) in search["curve"]
        assert entry["metrics"]["val_avg"] == search["score"]
        if search["mode"] != "fixed":
            assert search["subset_per_task"] == 20 and str(entry["alpha"]) in search["confirmed"]
            assert search["score"] == search["confirmed"][str(entry["alpha"])]
            # subset counts + complement counts = an evaluation of the whole validation split
            accs = ctx.accuracies(ctx.store.load_state(f"merged/{mid}"), split="val")
            assert search["score"] == pytest.approx(sum(accs.values()) / len(accs), abs=1e-12)
        assert "test" not in entry["metrics"]  # the evaluate stage measures test accuracy
        lo, hi = search["range"]
        assert search["hard_bounds"][0] <= lo <= min(search["grid"]) and max(search["grid"]) <= hi
        assert search["at_limit"] or search["mode"] == "fixed" or lo < entry["alpha"] < hi

    assert stages.evaluate(ctx) is True
    for name, tasks in stages.evaluation_plan(ctx):
        preds = load_predictions(ctx.run_dir, name)
        assert set(preds) == set(tasks)
        test = ctx.store.entry(name)["metrics"]["test"]
        for t, (pred, label) in preds.items():
            assert accuracy(pred, label) == test[t]
            assert np.array_equal(label, np.asarray(ctx.datamodule(t).datasets["test"].labels, dtype=np.int16))
    assert any(n.startswith("merged/") for n, _ in stages.evaluation_plan(ctx))
    assert stages.evaluate(ctx) is False  # all evaluated: nothing to do


def test_evaluation_precision_resolution():
    import torch

    from pactmerge.pipeline.evaluate import cpu_has_bf16, resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("32", cuda) == "32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cuda) == "bf16"
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_bf16() else "32")
    with pytest.raises(ValueError, match="use one of auto, 32, bf16"):
        resolve_precision("fp16", cpu)


def test_a_split_that_cannot_fit_the_input_cache_is_never_read_for_it(tiny_config, monkeypatch):
    from pactmerge.pipeline import evaluate
    from pactmerge.pipeline.evaluate import Evaluator
    from pactmerge.pipeline.study import open_study

    ctx = open_study(load_config(tiny_config()))
    reads = []
    real = evaluate.finished_batches
    monkeypatch.setattr(evaluate, "finished_batches", lambda *a, **k: reads.append(a[1]) or real(*a, **k))
    n = sum(Evaluator(ctx, cache_bytes=0).count(t, "val") for t in ctx.task_keys)
    side = ctx.loaded.image_size
    floats = n * 3 * side * side  # the finished inputs hold this many values, float32
    assert reads == []
    # below what even 2 bytes a value would take (twice: the parts and the pooled copy): not read at all
    ev = Evaluator(ctx, cache_bytes=2 * floats * 2 - 1)
    assert ev.pooled("val") is None and reads == []
    assert [ev.count(t, "val") for t in ctx.task_keys] == [Evaluator(ctx, cache_bytes=0).count(t, "val")
                                                           for t in ctx.task_keys]
    # might fit by the estimate: read and measured (float32 does not fit), then streamed
    ev = Evaluator(ctx, cache_bytes=2 * floats * 4 - 1)
    assert ev.pooled("val") is None and reads
    # fits: pooled, every example once
    reads.clear()
    ev = Evaluator(ctx, cache_bytes=2 * (floats * 4 + n * 8))  # with the int64 labels
    pooled = ev.pooled("val")
    assert pooled is not None and pooled.images.shape[0] == n and pooled.images.dtype == torch.float32
    assert len(reads) == len(ctx.task_keys)
