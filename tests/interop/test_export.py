"""``pactmerge export``: open_clip and Hugging Face outputs, from a store and from plain files."""

import json

import pytest
import torch

from pactmerge.cli import main
from pactmerge.fileio import load_state_dict, save_safetensors_atomic
from pactmerge.interop import open_clip_to_hf


def test_export_hf_loads_in_transformers(tiny, oc_tower, images, tmp_path):
    transformers = pytest.importorskip("transformers")
    src, heads = tmp_path / "merged.safetensors", tiny.WIDTH // tiny.HEAD_WIDTH
    # an HF-layout input file: export must read either layout
    save_safetensors_atomic(src, open_clip_to_hf(oc_tower.state_dict()))
    out = tmp_path / "hf"
    assert main(["export", "--input", str(src), "--format", "hf", "--out", str(out), "--heads", str(heads)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "pactmerge.json"]
    model = transformers.CLIPVisionModelWithProjection.from_pretrained(out).eval()
    assert model.config.hidden_act == "quick_gelu" and model.config.num_attention_heads == heads
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=images).image_embeds, oc_tower(images), rtol=1e-5, atol=1e-5)


def test_export_open_clip_from_store(tiny, oc_tower, images, tmp_path):
    from pactmerge.checkpoints import CheckpointStore

    store = CheckpointStore(tmp_path / "run")
    store.save_state("merged/task_arithmetic", oc_tower.state_dict(), {"alpha": 0.3})
    out = tmp_path / "export" / "merged.safetensors"
    assert main(["export", "--store", str(tmp_path / "run"), "--name", "merged/task_arithmetic",
                 "--format", "open_clip", "--out", str(out)]) == 0
    back = load_state_dict(out)
    fresh = tiny.open_clip(seed=9)
    fresh.load_state_dict(back, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), oc_tower(images))
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())  # fileio.sidecar_path
    assert sidecar["name"] == "merged/task_arithmetic" and sidecar["entry"]["alpha"] == 0.3


def test_export_refusals(tmp_path, capsys):
    from pactmerge.checkpoints import CheckpointStore

    store = CheckpointStore(tmp_path / "run")
    store.save_state("merged/x", {"trunk.conv.weight": torch.zeros(4, 3, 3, 3)})
    rc = main(["export", "--store", str(tmp_path / "run"), "--name", "merged/x", "--format", "hf", "--out", str(tmp_path / "o")])
    assert rc == 2 and "only CLIP ViT image towers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    rc = main(["export", "--store", str(tmp_path / "run"), "--name", "merged/missing", "--format", "open_clip",
               "--out", str(tmp_path / "o.safetensors")])
    assert rc == 2 and "no checkpoint 'merged/missing'" in capsys.readouterr().err
    rc = main(["export", "--store", str(tmp_path / "run"), "--name", "merged/x", "--format", "open_clip", "--out", str(tmp_path / "o.pt")])
    assert rc == 2 and "*.safetensors" in capsys.readouterr().err
