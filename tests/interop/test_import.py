"""``pactmerge import``: local files in both layouts into a run directory; refusals leave nothing behind."""

import pytest
import torch
from fixtures import tiny_vit_config

from pactmerge.cli import main
from pactmerge.fileio import save_safetensors_atomic
from pactmerge.interop import open_clip_to_hf


@pytest.fixture
def files(tiny, tmp_path):
    """A tiny model config, its pre-trained tower, and fine-tuned towers in both layouts."""
    tiny_vit_config(tmp_path, "tiny_vit", quick_gelu=True)
    (tmp_path / "base.yaml").write_text("data:\n  num_workers: 0\n")
    pre = tiny.open_clip(seed=0).state_dict()
    gen = torch.Generator().manual_seed(5)
    ft = {t: {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in pre.items()} for t in ("mnist", "digits")}
    save_safetensors_atomic(tmp_path / "pre.safetensors", pre)
    save_safetensors_atomic(tmp_path / "mnist.safetensors", ft["mnist"])
    # the public benchmark's per-task checkpoints: CLIPVisionModel, no visual_projection
    hf = open_clip_to_hf(ft["digits"])
    del hf["visual_projection.weight"]
    save_safetensors_atomic(tmp_path / "digits_hf" / "model.safetensors", hf)
    return {"dir": tmp_path, "pre": pre, "ft": ft}


def _args(files, *tasks):
    d = files["dir"]
    out = ["import", "--store", str(d / "run"), "--model", "tiny_vit", "--model-config", str(d / "tiny_vit.json"),
           "--weights", str(d / "pre.safetensors"), "--config", str(d / "base.yaml")]
    for t in tasks:
        out += ["--task", t]
    return out


def test_import_both_layouts(files, capsys):
    from pactmerge.checkpoints import CheckpointStore
    from pactmerge.pipeline.config import load_config
    from pactmerge.pipeline.context import RunContext
    from pactmerge.pipeline.rundir import claim

    d = files["dir"]
    rc = main(_args(files, f"mnist={d / 'mnist.safetensors'}", f"digits={d / 'digits_hf'}"))
    assert rc == 0, capsys.readouterr().err
    store = CheckpointStore(d / "run", create=False)
    assert set(store.names()) >= {"pretrained", "finetuned/mnist", "finetuned/digits", "heads/mnist", "heads/digits"}
    for k, v in store.load_state("pretrained").items():
        assert torch.equal(v, files["pre"][k])
    mnist = store.load_state("finetuned/mnist")
    assert all(torch.equal(mnist[k], files["ft"]["mnist"][k]) for k in files["pre"])
    digits = store.load_state("finetuned/digits")
    assert torch.equal(digits["proj"], files["pre"]["proj"])  # not in the checkpoint: the pre-trained one
    for k in files["pre"]:
        if k != "proj":
            assert torch.equal(digits[k], files["ft"]["digits"][k]), k
    entry = store.entry("finetuned/digits")
    assert entry["imported"]["layout"] == "hf" and entry["imported"]["filled_from_pretrained"] == ["proj"]
    assert store.load_head("mnist").shape == (10, files["pre"]["proj"].shape[1])
    # the written config reopens as the same study, so merge / evaluate / report run on it
    claim(RunContext(load_config(d / "run" / "config.yaml")))
    # importing the same files again keeps the entries
    assert main(_args(files, f"mnist={d / 'mnist.safetensors'}", f"digits={d / 'digits_hf'}")) == 0
    assert "already imported" in capsys.readouterr().out


def test_import_refuses_other_size(files, tiny, capsys):
    d = files["dir"]
    wide = {k: v for k, v in files["ft"]["mnist"].items()}
    wide["conv1.weight"] = torch.zeros(tiny.WIDTH, 3, 16, 16)  # patch 16 instead of 8
    save_safetensors_atomic(d / "wide.safetensors", wide)
    rc = main(_args(files, f"mnist={d / 'mnist.safetensors'}", f"digits={d / 'wide.safetensors'}"))
    err = capsys.readouterr().err
    assert rc == 2
    assert "conv1.weight (32, 3, 16, 16) instead of (32, 3, 8, 8)" in err
    assert "patch 16, image size 64" in err and "patch 8, image size 32" in err
    assert not (d / "run").exists()  # checked before the run directory is created


def test_import_refuses_missing_keys_and_unknown_layout(files, capsys):
    d = files["dir"]
    partial = {k: v for k, v in files["ft"]["mnist"].items() if "resblocks.1.mlp" not in k}
    save_safetensors_atomic(d / "partial.safetensors", partial)
    assert main(_args(files, f"mnist={d / 'partial.safetensors'}")) == 2
    assert "missing keys: transformer.resblocks.1.mlp.c_fc.bias" in capsys.readouterr().err
    save_safetensors_atomic(d / "resnet.safetensors", {"layer1.0.conv1.weight": torch.zeros(2, 2, 1, 1)})
    assert main(_args(files, f"mnist={d / 'resnet.safetensors'}")) == 2
    assert "not a CLIP ViT image tower in a layout pactmerge knows" in capsys.readouterr().err
    assert main(_args(files, f"mnist={d / 'mnist.safetensors'}", "nosuchtask=x.safetensors")) == 2
    assert "unknown task 'nosuchtask'" in capsys.readouterr().err
    assert not (d / "run").exists()


def test_hub_id_offline(files, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    rc = main(_args(files, "mnist=someone/clip-vit-tiny_mnist") + ["--cache-dir", str(tmp_path / "hub")])
    err = capsys.readouterr().err
    assert rc == 2 and "someone/clip-vit-tiny_mnist: cannot fetch this Hugging Face model" in err
    assert "huggingface-cli download" in err
    assert main(_args(files, "mnist=./not/here.safetensors")) == 2
    assert "no such file or directory" in capsys.readouterr().err
