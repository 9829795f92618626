"""``pactmerge analyze`` and ``pactmerge transfer`` on plain files and stores; refusals name what is wrong."""

import json

import pytest
import torch

from pactmerge.cli import main
from pactmerge.fileio import load_state_dict, save_safetensors_atomic


def test_analyze_plain_files(tower_files, tmp_path, capsys):
    root = tower_files["root"]
    out = tmp_path / "lbw"
    rc = main(["analyze", "--pretrained", str(root / "pretrained.safetensors"), "--finetuned",
               str(root / "mnist.safetensors"), f"digits={root / 'digits_hf.safetensors'}", "--out", str(out),
               "--K", "4", "--k", "2"])
    assert rc == 0
    report = json.loads((out / "lbw.json").read_text())
    assert report["tasks"] == ["mnist", "digits"]
    assert report["n_matrix_keys"] == 2 + 4 * 2  # positional_embedding, proj, 4 matrices per block
    names = {p.name for p in out.glob("*.png")}
    assert {"intrusion_by_layer.png", "intrusion_by_component.png", "similarity_all.png",
            "interference_before_most_affected.png", "interference_after_all.png"} <= names
    assert all((out / n).stat().st_size > 1000 for n in names)
    assert "E_in before" in capsys.readouterr().out


def test_analyze_store_without_models(tmp_path, tower_files, capsys):
    from pactmerge.checkpoints import CheckpointStore

    store = CheckpointStore(tmp_path / "run")
    rc = main(["analyze", "--store", str(tmp_path / "run"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no pre-trained encoder ('pretrained')" in capsys.readouterr().err
    store.save_state("pretrained", tower_files["pretrained"])
    store.save_state("finetuned/mnist", tower_files["finetuned"]["mnist"])
    rc = main(["analyze", "--store", str(tmp_path / "run"), "--tasks", "mnist,svhn", "--out", str(tmp_path / "o")])
    assert rc == 2 and "no fine-tuned model for ['svhn'] (have: ['mnist'])" in capsys.readouterr().err
    rc = main(["analyze", "--store", str(tmp_path / "run"), "--out", str(tmp_path / "o"), "--perturb", "--no-pact"])
    assert rc == 2 and "no run.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    rc = main(["analyze", "--pretrained", str(tmp_path / "x.safetensors"), "--finetuned", "a.safetensors",
               "--out", str(tmp_path / "o"), "--perturb"])
    assert rc == 2 and "--perturb evaluates accuracy" in capsys.readouterr().err


def test_analyze_refuses_other_architecture(tower_files, tmp_path, capsys):
    root = tower_files["root"]
    other = {k: v for k, v in tower_files["pretrained"].items() if not k.startswith("transformer.resblocks.1.")}
    save_safetensors_atomic(tmp_path / "shallow.safetensors", other)
    rc = main(["analyze", "--pretrained", str(root / "pretrained.safetensors"), "--finetuned",
               str(tmp_path / "shallow.safetensors"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "shallow.safetensors (task 'shallow') (open_clip layout) does not fit the pre-trained encoder" in err
    assert "missing keys: transformer.resblocks.1." in err


def test_transfer_files(tower_files, tmp_path):
    root = tower_files["root"]
    target = {k: v * 1.5 for k, v in tower_files["pretrained"].items()}
    save_safetensors_atomic(tmp_path / "target.safetensors", target)
    out = tmp_path / "out.safetensors"
    rc = main(["transfer", "--target", str(tmp_path / "target.safetensors"),
               "--task-vector", f"mnist={root / 'mnist.safetensors'}:{root / 'pretrained.safetensors'}",
               "--task-vector", f"digits={root / 'digits_hf.safetensors'}:{root / 'pretrained.safetensors'}",
               "--alpha", "0.5", "--out", str(out)])
    assert rc == 0
    got = load_state_dict(out)
    pre, fts = tower_files["pretrained"], tower_files["finetuned"]
    for k in ("proj", "transformer.resblocks.0.attn.in_proj_weight", "ln_pre.bias"):
        ref = target[k] + 0.5 * ((fts["mnist"][k] - pre[k]) + (fts["digits"][k] - pre[k]))
        torch.testing.assert_close(got[k], ref, rtol=1e-5, atol=1e-6)
    side = json.loads(out.with_name(out.name + ".json").read_text())  # fileio.sidecar_path
    assert side["alpha"] == 0.5 and set(side["task_vectors"]) == {"mnist", "digits"} and len(side["sha256"]) == 64


def test_transfer_pact_from_store(tower_files, tmp_path):
    from pactmerge.checkpoints import CheckpointStore

    store = CheckpointStore(tmp_path / "run")
    store.save_state("pretrained", tower_files["pretrained"])
    store.save_state("merged/task_arithmetic", {k: v + 0.01 for k, v in tower_files["pretrained"].items()})
    out = tmp_path / "added.safetensors"
    rc = main(["transfer", "--store", str(tmp_path / "run"), "--target-name", "merged/task_arithmetic",
               "--task-vector", f"mnist={tower_files['root'] / 'mnist.safetensors'}", "--alpha", "1.0", "--pact",
               "--pact-param", "K=4", "--pact-param", "k=2", "--out", str(out)])
    assert rc == 0
    side = json.loads(out.with_name(out.name + ".json").read_text())  # fileio.sidecar_path
    assert side["pact"] and side["target"]["name"] == "merged/task_arithmetic"
    # with one task and protect="others" PACT protects nothing: the plain sum
    assert side["diagnostics"]["removed_share"]["mnist"] == pytest.approx(0.0, abs=1e-12)


def test_transfer_refusals(tower_files, tmp_path, capsys):
    root = tower_files["root"]
    wide = {k: v for k, v in tower_files["pretrained"].items()}
    wide["proj"] = torch.zeros(32, 24)
    save_safetensors_atomic(tmp_path / "wide.safetensors", wide)
    base = ["transfer", "--alpha", "1", "--out", str(tmp_path / "o.safetensors")]
    rc = main(base + ["--target", str(tmp_path / "wide.safetensors"), "--task-vector",
                      f"mnist={root / 'mnist.safetensors'}:{root / 'pretrained.safetensors'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not match target" in err and "proj (32, 32) instead of (32, 24)" in err
    rc = main(base + ["--target", str(root / "pretrained.safetensors"), "--task-vector", f"mnist={root / 'mnist.safetensors'}"])
    assert rc == 2 and "no pre-trained file given and no --store" in capsys.readouterr().err
    rc = main(base + ["--target", str(root / "pretrained.safetensors"), "--evaluate",
                      "--task-vector", f"mnist={root / 'mnist.safetensors'}:{root / 'pretrained.safetensors'}"])
    assert rc == 2 and "--evaluate needs --store" in capsys.readouterr().err
    rc = main(base + ["--target", str(tmp_path / "nope.safetensors"),
                      "--task-vector", f"mnist={root / 'mnist.safetensors'}:{root / 'pretrained.safetensors'}"])
    assert rc == 2 and "nope.safetensors: no such file" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()
