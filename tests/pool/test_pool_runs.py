"""``pactmerge run`` with a ``pool:`` section: published checkpoints imported instead of fine-tuned,
then merged, evaluated and reported with the published column. Each pool kind is built here."""

from __future__ import annotations

import json

import pytest
import torch

from pool_builders import TASKS, hf_clip, hf_vision_finetune, lora_adapter, pool_config, task_vectors_pickles

pytest.importorskip("transformers")


def _run(cfg_path, capsys) -> dict:
    from pactmerge.cli import main

    assert main(["run", str(cfg_path)]) == 0, capsys.readouterr().err
    run = cfg_path.parent / "run"
    return json.loads((run / "results.json").read_text())


def _store(tmp_path):
    from pactmerge.checkpoints import CheckpointStore

    return CheckpointStore(tmp_path / "run", create=False)


def _check_published(results: dict, run_dir) -> None:
    rows = {r["name"]: r for r in results["rows"]}
    ta = rows["task_arithmetic"]
    assert ta["published"] == {"absolute": 50.0, "normalized": 60.0, "source": "a hand-made table for the test"}
    assert ta["diff_vs_published"]["absolute"] == pytest.approx(round(100 * ta["avg_absolute"] - 50.0, 2))
    assert rows["tsvm"]["published"]["source"] == "another hand-made table"
    assert "published" not in rows["pact+tsvm"]  # PACT rows are new: no published value
    md = (run_dir / "results.md").read_text()
    assert "Published: a hand-made table for the test" in md and "- source: another hand-made table" in md
    section = md.split("Published: ", 1)[1]
    cells = next(ln for ln in section.splitlines() if ln.startswith("| pact+tsvm |")).split("|")
    assert cells[3].strip() == "—" and cells[4].strip() == "—"  # published and difference
    cells = next(ln for ln in section.splitlines() if ln.startswith("| task_arithmetic |")).split("|")
    assert cells[3].strip() == "50.0" and cells[4].strip() == f"{round(100 * ta['avg_absolute'] - 50.0, 2):+.1f}"


def test_hf_directories_pool_runs_to_a_report(tmp_path, capsys):
    """A HF CLIPModel as pre-trained (heads from its text tower), CLIPVisionModel directories per task and
    a joint checkpoint: imported bit for bit, a joint row and no sequential row, the published column."""
    import open_clip
    import torch.nn.functional as F

    from pactmerge.datamodules import get_task
    from pactmerge.interop import hf_to_open_clip

    base = hf_clip(tmp_path / "pre")
    fts = {t: hf_vision_finetune(tmp_path / t, base, seed=i + 1) for i, t in enumerate(TASKS)}
    hf_vision_finetune(tmp_path / "joint", base, seed=9)
    cfg = pool_config(tmp_path, {"pretrained": str(tmp_path / "pre"), "joint": str(tmp_path / "joint"),
                                 "finetuned": {t: str(tmp_path / t) for t in TASKS}})
    results = _run(cfg, capsys)
    store = _store(tmp_path)
    proj = base.visual_projection.weight.detach().t()
    for t, model in fts.items():
        want = hf_to_open_clip(model.state_dict())
        got = store.load_state(f"finetuned/{t}")
        assert set(got) == set(want) | {"proj"} and torch.equal(got["proj"], proj)  # proj: not fine-tuned
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert store.entry(f"finetuned/{t}")["imported"]["layout"] == "hf"
    assert torch.equal(store.load_state("pretrained")["proj"], proj)
    # the head of a task is CLIP's zero-shot head computed by transformers from the same text tower
    info = get_task("digits")
    tok = open_clip.get_tokenizer("tiny_pool")
    with torch.no_grad():
        per_class = []
        for c in info.classnames:
            texts = [t(c) if callable(t) else t.format(c) for t in info.templates]
            out = base.get_text_features(input_ids=tok(texts))
            out = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers >= 5
            emb = F.normalize(out, dim=-1).mean(0)
            per_class.append(F.normalize(emb, dim=-1))
    assert torch.allclose(store.load_head("digits"), torch.stack(per_class), atol=1e-5)
    names = [r["name"] for r in results["rows"]]
    assert "joint" in names and "sequential" not in names and "individual" in names
    assert {"task_arithmetic", "pact+task_arithmetic", "tsvm", "pact+tsvm"} <= set(names)
    assert not (tmp_path / "run" / "lightning").exists() or not any((tmp_path / "run" / "lightning").iterdir())
    _check_published(results, tmp_path / "run")


def test_lora_adapter_pool_materialises_scale_b_a(tmp_path, capsys):
    """PEFT LoRA-16-style adapters: each adapted weight is W + (alpha / r) B A, every other key is the pre-trained one."""
    from pactmerge.interop import hf_to_open_clip

    base = hf_clip(tmp_path / "pre")
    factors = {"digits": lora_adapter(tmp_path / "digits_lora", seed=1),
               "faces": lora_adapter(tmp_path / "faces_lora", seed=2, prefix="base_model.model.vision_model.")}
    cfg = pool_config(tmp_path, {"pretrained": str(tmp_path / "pre"),
                                 "finetuned": {t: str(tmp_path / f"{t}_lora") for t in TASKS}})
    results = _run(cfg, capsys)
    store = _store(tmp_path)
    pre = {f"visual.{k}": v for k, v in hf_to_open_clip(base.state_dict()).items()}
    pre = {k.removeprefix("visual."): v for k, v in pre.items()}
    for t in TASKS:
        got = store.load_state(f"finetuned/{t}")
        changed = set()
        for i in range(2):
            key = f"transformer.resblocks.{i}.attn.in_proj_weight"
            q, k, v = pre[key].double().chunk(3)
            (aq, bq), (av, bv) = factors[t][f"encoder.layers.{i}.self_attn.q_proj"], \
                factors[t][f"encoder.layers.{i}.self_attn.v_proj"]
            want = torch.cat([q + 2.0 * bq.double() @ aq.double(), k, v + 2.0 * bv.double() @ av.double()]).float()
            assert torch.allclose(got[key], want, atol=1e-6) and not torch.equal(got[key], pre[key])
            changed.add(key)
        assert all(torch.equal(got[k], pre[k]) for k in pre if k not in changed)
        assert store.entry(f"finetuned/{t}")["imported"]["layout"] == "lora"
    assert {"task_arithmetic", "pact+tsvm"} <= {r["name"] for r in results["rows"]}
    _check_published(results, tmp_path / "run")


def test_task_vectors_pickles_pool_incl_zero_shot(tmp_path, capsys):
    """task_vectors pickles (zeroshot.pt, <Task>/finetuned.pt) with legacy_pickle: read without their code."""
    towers = task_vectors_pickles(tmp_path / "tv")
    cfg = pool_config(tmp_path, {"pretrained": str(tmp_path / "tv" / "zeroshot.pt"), "legacy_pickle": True,
                                 "finetuned": {"digits": str(tmp_path / "tv" / "Digits" / "finetuned.pt"),
                                               "faces": str(tmp_path / "tv" / "Faces" / "finetuned.pt")}})
    results = _run(cfg, capsys)
    store = _store(tmp_path)
    for entry, file in [("pretrained", "zeroshot.pt"), ("finetuned/digits", "Digits/finetuned.pt"),
                        ("finetuned/faces", "Faces/finetuned.pt")]:
        got, want = store.load_state(entry), towers[file]
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), entry
    names = [r["name"] for r in results["rows"]]
    assert "joint" not in names and "sequential" not in names
    _check_published(results, tmp_path / "run")
    # a rerun imports nothing again and keeps the report
    from pactmerge.cli import main

    assert main(["run", str(cfg)]) == 0
    # a pool fine-tunes nothing: the finetune command on a fresh directory says where the imports come from
    assert main(["finetune", str(cfg), "--output-dir", str(tmp_path / "other"), "--task", "digits"]) != 0
    assert "imports its checkpoints (pool:)" in capsys.readouterr().err


def test_import_command_reads_legacy_zero_shot_weights(tmp_path, capsys):
    """`pactmerge import --legacy-pickle --weights zeroshot.pt --task ...=<Task>/finetuned.pt` (the README's example)."""
    from pool_builders import OPEN_CLIP_CFG

    from pactmerge.cli import main

    towers = task_vectors_pickles(tmp_path / "tv")
    (tmp_path / "tiny_pool.json").write_text(json.dumps(OPEN_CLIP_CFG))
    (tmp_path / "base.yaml").write_text("data:\n  num_workers: 0\n")
    args = ["import", "--store", str(tmp_path / "run"), "--model", "tiny_pool", "--model-config",
            str(tmp_path / "tiny_pool.json"), "--weights", str(tmp_path / "tv" / "zeroshot.pt"), "--config",
            str(tmp_path / "base.yaml"), "--task", f"digits={tmp_path / 'tv' / 'Digits' / 'finetuned.pt'}"]
    assert main(args) == 2
    assert "zeroshot.pt: pickled objects" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main([*args, "--legacy-pickle"]) == 0, capsys.readouterr().err
    store = _store(tmp_path)
    for entry, file in [("pretrained", "zeroshot.pt"), ("finetuned/digits", "Digits/finetuned.pt")]:
        got, want = store.load_state(entry), towers[file]
        assert all(torch.equal(got[k], want[k]) for k in want), entry
