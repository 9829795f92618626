"""A Hugging Face CLIPModel of the real ViT-B/32 sizes (random weights: transformers' default
CLIPConfig is openai/clip-vit-base-patch32's) loads as model.weights of open_clip's
ViT-B-32-quickgelu: image and text features agree with transformers' own."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_hf_clip_vitb32_as_open_clip_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    import open_clip

    from pactmerge.pipeline.model import load_model
    from pactmerge.pipeline.model_spec import ModelSpec

    cfg = transformers.CLIPConfig()
    cfg.text_config.hidden_act = cfg.vision_config.hidden_act = "quick_gelu"
    torch.manual_seed(0)
    hf = transformers.CLIPModel(cfg).eval()
    hf.save_pretrained(tmp_path / "clip")
    loaded = load_model(ModelSpec(name="ViT-B-32-quickgelu", weights=str(tmp_path / "clip")))
    assert loaded.text_pretrained and loaded.image_size == 224
    assert loaded.logit_scale == pytest.approx(float(hf.logit_scale.exp()))
    images = torch.randn(2, 3, 224, 224)
    tokens = open_clip.get_tokenizer("ViT-B-32-quickgelu")(["a photo of a dog.", "a satellite image of a river."])

    def features(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers >= 5 wraps them

    with torch.no_grad():
        assert torch.allclose(loaded.encoder(images), features(hf.get_image_features(pixel_values=images)),
                              atol=1e-4)
        assert torch.allclose(loaded._clip.encode_text(tokens), features(hf.get_text_features(input_ids=tokens)),
                              atol=1e-4)
