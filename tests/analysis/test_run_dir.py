"""Accuracy-based analysis on a real run directory: tiny ViT, offline ``digits`` data, an imported checkpoint."""

import json

import pytest

from pactmerge.cli import main

pytestmark = pytest.mark.slow


def test_perturbation_curves(run_dir, tmp_path):
    out = tmp_path / "lbw"
    rc = main(["analyze", "--store", str(run_dir), "--out", str(out), "--K", "4", "--k", "2", "--no-pact",
               "--perturb", "--strengths", "0,2", "--fraction", "0.05", "--split", "val"])
    assert rc == 0
    report = json.loads((out / "lbw.json").read_text())
    curves = report["perturbation"]["digits"]
    assert curves["strengths"] == [0.0, 2.0] and len(curves["lbw"]) == len(curves["random"]) == 2
    # strength 0 perturbs nothing: both curves start at the fine-tuned model's own accuracy
    from pactmerge.analysis.runs import RunEvaluator
    from pactmerge.checkpoints import CheckpointStore

    ft = CheckpointStore(run_dir).load_state("finetuned/digits")
    assert curves["lbw"][0] == curves["random"][0]
    assert curves["lbw"][0] == pytest.approx(RunEvaluator(run_dir, split="val").accuracy("digits", ft))
    # masks have the same size: 5% of every matrix key's entries
    assert curves["mask_size"] == sum(round(0.05 * (r["shape"][0] * r["shape"][1])) for r in report["keys"].values())
    assert (out / "perturbation.png").is_file()


def test_transfer_evaluate(run_dir, tower_files, tmp_path, capsys):
    from pactmerge.analysis.runs import RunEvaluator
    from pactmerge.checkpoints import CheckpointStore

    out = tmp_path / "t.safetensors"
    root = tower_files["root"]
    rc = main(["transfer", "--store", str(run_dir), "--target-name", "pretrained", "--alpha", "1.0",
               "--task-vector", f"digits={root / 'digits_hf.safetensors'}", "--evaluate", "--split", "val", "--out", str(out)])
    assert rc == 0
    side = json.loads(out.with_name(out.name + ".json").read_text())  # fileio.sidecar_path
    # alpha 1 on its own pre-trained encoder rebuilds the fine-tuned model: same accuracy as evaluating it directly
    ft = CheckpointStore(run_dir).load_state("finetuned/digits")
    assert side["accuracy"]["digits"] == pytest.approx(RunEvaluator(run_dir, split="val").accuracy("digits", ft))
    assert "digits:" in capsys.readouterr().out


def test_run_evaluator_gives_the_evaluate_stages_accuracies(run_dir, monkeypatch):
    """On the run's own tasks, analysis accuracies are those of `pactmerge evaluate`, digit for digit,
    and the split is read once however many states are evaluated."""
    import numpy as np

    from pactmerge.analysis.runs import RunEvaluator
    from pactmerge.checkpoints import CheckpointStore
    from pactmerge.pipeline import evaluate
    from pactmerge.pipeline.context import open_run_dir
    from pactmerge.pipeline.evaluate import accuracy, predict_encoder

    ctx = open_run_dir(run_dir)
    store = CheckpointStore(run_dir)
    ft, pre = store.load_state("finetuned/digits"), store.load_state("pretrained")
    study = ctx.evaluator().predictions(ft, ["digits"], split="test")["digits"]
    reads = []
    real = evaluate.finished_batches
    monkeypatch.setattr(evaluate, "finished_batches", lambda *a, **k: reads.append(a[1]) or real(*a, **k))
    run_eval = RunEvaluator(run_dir, split="test")
    assert run_eval.accuracy("digits", ft) == accuracy(*study)
    assert run_eval.accuracy("digits", pre) == accuracy(*ctx.evaluator().predictions(pre, ["digits"])["digits"])
    assert run_eval.accuracy("digits", ft) == accuracy(*study)
    assert reads == ["test"]  # three evaluations, one pass over the data
    monkeypatch.setattr(evaluate, "finished_batches", real)
    # the same examples as the data module's own loader gives, in the same order
    direct = predict_encoder(ctx.loaded.encoder, ft, ctx.heads(), ctx.datamodules(["digits"]), split="test",
                             device="cpu", precision=ctx.evaluator().precision)["digits"]
    assert np.array_equal(direct[1], study[1])


def test_tasks_outside_the_run_go_through_the_studys_encoder(run_dir):
    """A task the run lacks is evaluated by the study's own evaluation encoder at the study's precision
    (not the unfolded route), alone or beside the run's tasks, and that leaves the encoder's layout as
    it was."""
    import numpy as np
    import torch

    from pactmerge.analysis.runs import RunEvaluator
    from pactmerge.checkpoints import CheckpointStore
    from pactmerge.pipeline.evaluate import accuracy, stream_predictions

    run_eval = RunEvaluator(run_dir, split="val")
    ft = CheckpointStore(run_dir).load_state("finetuned/digits")
    both = run_eval(ft, ["digits", "mnist"])
    study = run_eval.ctx.evaluator()
    assert both["digits"] == accuracy(*study.predictions(ft, ["digits"], split="val")["digits"])
    assert run_eval(ft, ["mnist"]) == {"mnist": both["mnist"]}
    module = study.encoder().module
    weights4d = [p for p in module.parameters() if p.ndim == 4]
    assert weights4d and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights4d)
    # the same predictions as that encoder gives when the batches are streamed to it by hand
    dms = run_eval.ctx.datamodules(["mnist"])
    pred, label = stream_predictions(study.encoder_at(ft), {"mnist": run_eval.head("mnist")}, dms, split="val",
                                     logit_scale=run_eval.ctx.loaded.logit_scale, device=study.device,
                                     precision=study.precision)["mnist"]
    assert both["mnist"] == accuracy(pred, label) and len(label) == 48
    assert np.isfinite(both["mnist"])


def test_streamed_evaluation_equals_the_pooled_one_and_keeps_the_layout(run_dir):
    """Inputs over the evaluator's budget are streamed: the same predictions as the pooled path, and
    the evaluation encoder stays channels-last for the evaluations after it."""
    import numpy as np
    import torch

    from pactmerge.checkpoints import CheckpointStore
    from pactmerge.pipeline.context import open_run_dir
    from pactmerge.pipeline.evaluate import Evaluator

    ctx = open_run_dir(run_dir)
    ft = CheckpointStore(run_dir).load_state("finetuned/digits")
    pooled = Evaluator(ctx).predictions(ft, ["digits"], split="test")["digits"]
    streamed_eval = Evaluator(ctx, cache_bytes=0)
    streamed = streamed_eval.predictions(ft, ["digits"], split="test")["digits"]
    assert streamed_eval.pooled("test") is None
    assert np.array_equal(streamed[0], pooled[0]) and np.array_equal(streamed[1], pooled[1])
    weights4d = [p for p in streamed_eval.encoder().module.parameters() if p.ndim == 4]
    assert weights4d and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights4d)
