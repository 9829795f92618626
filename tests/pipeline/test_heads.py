import pytest
import torch
from tiny import task_info

from pactmerge.errors import ConfigError
from pactmerge.pipeline.heads import build_heads, check_head, head_logits, orthonormal_head
from pactmerge.pipeline.model import ModelSpec, load_model


def test_orthonormal_head_is_deterministic_and_orthonormal():
    a, b = orthonormal_head("mnist", 10, 64), orthonormal_head("mnist", 10, 64)
    assert a.dtype == torch.float32 and a.shape == (10, 64) and torch.equal(a, b)
    torch.testing.assert_close(a @ a.T, torch.eye(10), atol=1e-6, rtol=0)
    assert not torch.allclose(a, orthonormal_head("digits", 10, 64))
    with pytest.raises(ConfigError, match="do not fit"):
        orthonormal_head("x", 65, 64)


def test_random_text_tower_gives_orthonormal_heads(tiny_loaded):
    heads = build_heads(tiny_loaded, [task_info("digits"), task_info("fashion_mnist")])
    assert torch.equal(heads["digits"], orthonormal_head("digits", 10, 32))


def test_text_head_matches_hand_computation(tmp_path, tiny_config, tiny_loaded):
    from pactmerge.fileio import save_safetensors_atomic

    save_safetensors_atomic(tmp_path / "full.safetensors", tiny_loaded._clip.state_dict())
    loaded = load_model(ModelSpec(config=str(tiny_config), weights=str(tmp_path / "full.safetensors")))
    info = task_info("digits")
    head = build_heads(loaded, [info])["digits"]
    clip, tok = loaded._clip, loaded._tokenizer
    with torch.no_grad():
        for c, name in enumerate(info.classnames):
            e = [clip.encode_text(tok([t.format(name)]))[0] for t in info.templates]
            e = [v / v.norm() for v in e]
            mean = (e[0] + e[1]) / 2
            torch.testing.assert_close(head[c], mean / mean.norm(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(head.norm(dim=1), torch.ones(10))
    # same as open_clip's own zero-shot classifier
    import open_clip

    ref = open_clip.build_zero_shot_classifier(clip, tok, info.classnames, info.templates)
    torch.testing.assert_close(head, ref.T, atol=1e-6, rtol=1e-5)
    loaded.release_text()
    with pytest.raises(ConfigError, match="released"):
        loaded.build_text_head(info.classnames, info.templates)


def test_head_shape_mismatch_is_refused():
    with pytest.raises(ConfigError, match=r"expected \(10, 32\)"):
        check_head("digits", torch.randn(9, 32), 10, 32)


def test_head_logits_hand_computed():
    feats = torch.tensor([[3.0, 4.0]])
    head = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(head_logits(feats, head, 10.0), torch.tensor([[6.0, 8.0]]))


def test_heads_text_builds_from_a_random_text_tower(tiny_config, tiny_loaded):
    """``model.heads: text``: zero-shot heads through open_clip's builder even without weights
    (the random tower of a real architecture); ``auto`` keeps orthonormal heads for it."""
    import open_clip

    assert not tiny_loaded.text_heads
    loaded = load_model(ModelSpec(config=str(tiny_config), heads="text"))
    assert loaded.text_heads and not loaded.text_pretrained and loaded.logit_scale == 100.0
    info = task_info("digits")
    head = build_heads(loaded, [info])["digits"]
    ref = open_clip.build_zero_shot_classifier(loaded._clip, loaded._tokenizer, info.classnames, info.templates)
    torch.testing.assert_close(head, ref.T, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(head.norm(dim=1), torch.ones(10))
    assert not torch.allclose(head, orthonormal_head("digits", 10, 32))
    # the random tower is seeded: another load gives the same heads
    again = build_heads(load_model(ModelSpec(config=str(tiny_config), heads="text")), [info])["digits"]
    assert torch.equal(head, again)


def test_mixed_templates_and_heads_orthonormal(tmp_path, tiny_config, tiny_loaded):
    from pactmerge.fileio import save_safetensors_atomic

    save_safetensors_atomic(tmp_path / "full.safetensors", tiny_loaded._clip.state_dict())
    loaded = load_model(ModelSpec(config=str(tiny_config), weights=str(tmp_path / "full.safetensors")))
    assert loaded.text_heads  # auto: a trained text tower gives text heads
    names = ["0", "1", "2"]
    mixed = loaded.build_text_head(names, ["a photo of {}.", lambda c: f"the number {c}"])
    by_hand = loaded.build_text_head(names, [lambda c: f"a photo of {c}.", "the number {}"])
    torch.testing.assert_close(mixed, by_hand)
    plain = load_model(ModelSpec(config=str(tiny_config), weights=str(tmp_path / "full.safetensors"),
                                 heads="orthonormal"))
    assert plain.text_pretrained and not plain.text_heads
    assert torch.equal(build_heads(plain, [task_info("digits")])["digits"], orthonormal_head("digits", 10, 32))
    with pytest.raises(ConfigError, match="model.heads"):
        ModelSpec(heads="zero-shot")
