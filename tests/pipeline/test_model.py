import json

import pytest
import torch

from pactmerge.errors import CheckpointError, ConfigError
from pactmerge.pipeline.model import ModelSpec, load_model


def test_tiny_config_loads(tiny_loaded):
    assert tiny_loaded.embed_dim == 32 and tiny_loaded.image_size == 32
    assert not tiny_loaded.text_pretrained and tiny_loaded.logit_scale == 100.0
    assert tiny_loaded.encoder(torch.randn(2, 3, 32, 32)).shape == (2, 32)
    assert tiny_loaded.model_config["vision_cfg"]["width"] == 32
    json.dumps(tiny_loaded.model_config)
    state = tiny_loaded.encoder_state()
    assert set(state) == set(tiny_loaded.encoder.state_dict())
    state["conv1.weight"].add_(1.0)  # a clone: the recorded pre-trained state is unchanged
    assert not torch.equal(state["conv1.weight"], tiny_loaded.encoder_state()["conv1.weight"])


def test_unknown_name_lists_close_matches():
    with pytest.raises(ConfigError, match="ViT-B-32"):
        load_model(ModelSpec(name="ViT-B-23"))


def test_missing_weights_and_config(tmp_path, tiny_config):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(ModelSpec(config=str(tiny_config), weights=str(tmp_path / "nope.safetensors")))
    with pytest.raises(ConfigError, match="no such file"):
        load_model(ModelSpec(config=str(tmp_path / "nope.json")))


def test_weights_file_round_trip(tmp_path, tiny_config, tiny_loaded):
    from pactmerge.fileio import save_safetensors_atomic

    full = tiny_loaded._clip.state_dict()
    save_safetensors_atomic(tmp_path / "full.safetensors", full)
    again = load_model(ModelSpec(config=str(tiny_config), weights=str(tmp_path / "full.safetensors")))
    assert again.text_pretrained
    for k, v in tiny_loaded.encoder_state().items():
        assert torch.equal(v, again.encoder_state()[k])
    # an image-tower-only file (as written by the checkpoint store) loads too, without text
    save_safetensors_atomic(tmp_path / "visual.safetensors", tiny_loaded.encoder_state())
    vis = load_model(ModelSpec(config=str(tiny_config), weights=str(tmp_path / "visual.safetensors")))
    assert not vis.text_pretrained and vis.weights_sha256 == tiny_loaded.weights_sha256
    # a pickled torch file is refused unless trusted
    torch.save({"visual.conv1.weight": full["visual.conv1.weight"], "meta": object()}, tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match="trust-pickle"):
        load_model(ModelSpec(config=str(tiny_config), weights=str(tmp_path / "p.pt")))


def test_offline_efficientnet_real_weights():
    """The packaged ImageNet weights: the timm classifier calls scikit-image's cat a cat, and
    the CLIP image tower built from the same trunk gives the same pooled features."""
    timm = pytest.importorskip("timm")
    skdata = pytest.importorskip("skimage.data")
    from pactmerge.pipeline.model_effnet import efficientnet_lite0_timm_state

    loaded = load_model(ModelSpec(image_size=64))
    assert loaded.embed_dim == 1280 and loaded.mean == (0.5, 0.5, 0.5) and loaded.image_size == 64
    ref = timm.create_model("tf_efficientnet_lite0")
    ref.load_state_dict(efficientnet_lite0_timm_state())
    ref.eval()
    img = torch.tensor(skdata.chelsea()).permute(2, 0, 1).float()[None] / 255
    x = (torch.nn.functional.interpolate(img, size=224, mode="bilinear") - 0.5) / 0.5
    with torch.no_grad():
        top5 = ref(x).topk(5).indices[0].tolist()
        assert set(top5) & {281, 282, 283, 284, 285}  # ImageNet cat classes
        feats = loaded.encoder.eval()(x)
        assert torch.allclose(feats, ref.forward_head(ref.forward_features(x), pre_logits=True), atol=1e-5)
    # every encoder parameter is pre-trained: no random projection
    trunk = {f"trunk.{k}": v for k, v in efficientnet_lite0_timm_state().items() if not k.startswith("classifier")}
    assert set(loaded.encoder_state()) == set(trunk)


def test_image_size_override_resizes_position_embeddings(tmp_path, tiny_config, tiny_loaded):
    from pactmerge.fileio import save_safetensors_atomic

    save_safetensors_atomic(tmp_path / "v.safetensors", tiny_loaded.encoder_state())
    big = load_model(ModelSpec(config=str(tiny_config), weights=str(tmp_path / "v.safetensors"), image_size=48))
    assert big.image_size == 48 and big.model_config["vision_cfg"]["image_size"] == 48
    assert big.encoder_state()["positional_embedding"].shape == (1 + 6 * 6, 32)
    assert torch.equal(big.encoder_state()["conv1.weight"], tiny_loaded.encoder_state()["conv1.weight"])
    assert big.encoder(torch.randn(1, 3, 48, 48)).shape == (1, 32)


def test_transforms_map_pil_to_normalised_tensor(tiny_loaded):
    from PIL import Image

    img = Image.new("RGB", (50, 40), (255, 255, 255))
    x = tiny_loaded.eval_transform(img)
    assert x.shape == (3, 32, 32)
    expected = torch.tensor([(1 - m) / s for m, s in zip(tiny_loaded.mean, tiny_loaded.std)])
    torch.testing.assert_close(x[:, 16, 16], expected, atol=1e-5, rtol=0)
