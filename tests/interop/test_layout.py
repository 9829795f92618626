"""open_clip <-> Hugging Face CLIP vision layout: outputs agree, round trips are exact, bad layouts refused."""

import pytest
import torch

from pactmerge.errors import CheckpointError
from pactmerge.interop import VisionGeometry, detect_layout, hf_to_open_clip, open_clip_to_hf, to_open_clip


def _hf_embeds(model, images):
    with torch.no_grad():
        return model(pixel_values=images).image_embeds


def test_open_clip_to_hf_outputs_agree(tiny, oc_tower, images):
    hf = tiny.hf(seed=1)
    converted = open_clip_to_hf(oc_tower.state_dict())
    missing, unexpected = hf.load_state_dict(converted, strict=False)
    # position_ids is a non-persistent buffer in recent transformers, persistent in old ones
    assert [k for k in missing if not k.endswith("position_ids")] == [] and unexpected == []
    with torch.no_grad():
        ref = oc_tower(images)
    torch.testing.assert_close(_hf_embeds(hf, images), ref, rtol=1e-5, atol=1e-5)
    assert ref.abs().max() > 1e-2  # a meaningful, non-degenerate output


def test_hf_to_open_clip_outputs_agree(tiny, images):
    hf = tiny.hf(seed=2)
    tower = tiny.open_clip(seed=3)
    converted = hf_to_open_clip(hf.state_dict())
    tower.load_state_dict(converted, strict=True)
    with torch.no_grad():
        out = tower(images)
    torch.testing.assert_close(out, _hf_embeds(hf, images), rtol=1e-5, atol=1e-5)


def test_round_trips_are_exact(tiny, oc_tower):
    sd = oc_tower.state_dict()
    back = hf_to_open_clip(open_clip_to_hf(sd))
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    hf_sd = open_clip_to_hf(sd)
    again = open_clip_to_hf(hf_to_open_clip(hf_sd))
    assert again.keys() == hf_sd.keys() and all(torch.equal(again[k], hf_sd[k]) for k in hf_sd)


def test_packing_order_is_q_k_v(tiny, oc_tower):
    sd = oc_tower.state_dict()
    hf_sd = open_clip_to_hf(sd)
    packed = sd["transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(hf_sd["vision_model.encoder.layers.1.self_attn.q_proj.weight"], packed[:tiny.WIDTH])
    assert torch.equal(hf_sd["vision_model.encoder.layers.1.self_attn.v_proj.weight"], packed[2 * tiny.WIDTH :])
    assert torch.equal(hf_sd["visual_projection.weight"], sd["proj"].T)


def test_dtype_kept(tiny, oc_tower):
    sd = {k: v.half() for k, v in oc_tower.state_dict().items()}
    assert all(v.dtype == torch.float16 for v in open_clip_to_hf(sd).values())


def test_detect_prefixes(tiny, oc_tower):
    sd = oc_tower.state_dict()
    whole_clip = {f"visual.{k}": v for k, v in sd.items()}
    whole_clip["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3)  # a text tower beside it
    whole_clip["token_embedding.weight"] = torch.zeros(3)
    det = detect_layout(whole_clip)
    assert (det.layout, det.prefix) == ("open_clip", "visual.")
    tower, layout = to_open_clip(whole_clip)
    assert layout == "open_clip" and tower.keys() == sd.keys()

    hf_sd = open_clip_to_hf(sd)
    bare = open_clip_to_hf(sd, prefix="")  # transformers>=5 CLIPVisionModel
    assert detect_layout(bare).prefix == "" and detect_layout(hf_sd).proj_key == "visual_projection.weight"
    # a CLIPModel checkpoint: text tower and logit scale beside the vision tower
    clip_model = dict(hf_sd, **{"text_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(2), "logit_scale": torch.tensor(1.0)})
    assert to_open_clip(clip_model)[0].keys() == sd.keys()
    # an old transformers checkpoint with the position_ids buffer and no projection (CLIPVisionModel)
    old = {k: v for k, v in hf_sd.items() if k != "visual_projection.weight"}
    old["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    converted = hf_to_open_clip(old)
    assert "proj" not in converted and len(converted) == len(sd) - 1


def test_geometry(tiny, oc_tower):
    geom = VisionGeometry.from_open_clip_state(oc_tower.state_dict())
    assert geom == VisionGeometry(tiny.WIDTH, tiny.LAYERS, tiny.MLP, tiny.PATCH, tiny.IMAGE, tiny.OUT)


def test_unrecognised_layout_names_keys(tiny):
    with pytest.raises(CheckpointError, match="not a CLIP ViT image tower.*'fc.weight'"):
        detect_layout({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, source="model.pt")


def test_two_towers_refused(tiny, oc_tower):
    sd = oc_tower.state_dict()
    both = {**{f"a.{k}": v for k, v in sd.items()}, **{f"b.{k}": v for k, v in sd.items()}}
    with pytest.raises(CheckpointError, match="2 image towers"):
        detect_layout(both)


def test_unknown_keys_refused(tiny, oc_tower):
    sd = dict(oc_tower.state_dict())
    sd["transformer.resblocks.0.ls_1.gamma"] = torch.ones(tiny.WIDTH)  # layer scale: HF CLIP has no place for it
    with pytest.raises(CheckpointError, match="ls_1.gamma"):
        open_clip_to_hf(sd)
    hf_sd = open_clip_to_hf(oc_tower.state_dict())
    del hf_sd["vision_model.encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(CheckpointError, match="k_proj.bias"):
        hf_to_open_clip(hf_sd)
    hf_sd = open_clip_to_hf(oc_tower.state_dict())
    hf_sd["vision_model.encoder.layers.0.adapter.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="adapter.weight"):
        hf_to_open_clip(hf_sd)


def test_missing_block_named(tiny, oc_tower):
    sd = {k: v for k, v in oc_tower.state_dict().items() if not k.startswith("transformer.resblocks.0.")}
    sd["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3 * tiny.WIDTH, tiny.WIDTH)  # keep the anchor
    sd = {k: v for k, v in sd.items()}
    hf = open_clip_to_hf(sd)
    assert "vision_model.encoder.layers.0.mlp.fc1.weight" not in hf  # missing keys stay missing, never invented


def test_conversion_does_not_import_transformers():
    import subprocess
    import sys

    code = ("import sys, torch; from pactmerge.interop import hf_to_open_clip, open_clip_to_hf, to_open_clip; "
            "from pactmerge.interop.files import load_encoder_file; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hf_config_without_transformers(tiny, oc_tower, monkeypatch, tmp_path):
    import sys

    from pactmerge.errors import ConfigError
    from pactmerge.interop.exporter import export_hf

    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"needs transformers: pip install 'pactmerge\[hf\]'"):
        export_hf(oc_tower.state_dict(), tmp_path / "hf", heads=4)
    assert not (tmp_path / "hf").exists()
