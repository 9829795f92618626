"""Legacy ``torch.save(model)`` checkpoints: read their weights without their code, refuse pickles that run code.

The pickles are built here the way task_vectors / tall_masks / AdaMerging built theirs: a
temporary package ``src.modeling`` with an ``ImageEncoder`` wrapping an open_clip CLIP (text
tower deleted, the training transforms kept as attributes), ``torch.save(encoder)``, then the
package is removed from ``sys.path`` and ``sys.modules`` before the file is read.
"""

import contextlib
import json
import os
import sys
import textwrap

import pytest
import torch
from fixtures import TINY_VIT

from pactmerge.errors import CheckpointError
from pactmerge.interop.legacy import UnsafePickleError, load_encoder, read_legacy_pickle

CFG = {**TINY_VIT, "quick_gelu": True}  # the shared tiny ViT (tests/fixtures.py)

MODELING = textwrap.dedent('''
    import torch


    class ImageEncoder(torch.nn.Module):
        def __init__(self, model, train_preprocess, val_preprocess, keep_lang=False):
            super().__init__()
            self.model = model
            self.train_preprocess = train_preprocess
            self.val_preprocess = val_preprocess
            self.cache_dir = "/nonexistent/openclip-cachedir"
            if not keep_lang and hasattr(self.model, "transformer"):
                delattr(self.model, "transformer")

        def forward(self, images):
            return self.model.encode_image(images)


    class ClassificationHead(torch.nn.Linear):
        def __init__(self, normalize, weights):
            super().__init__(weights.shape[1], weights.shape[0])
            self.normalize = normalize
            self.weight = torch.nn.Parameter(weights.clone())
            self.bias = torch.nn.Parameter(torch.zeros_like(self.bias))


    class ImageClassifier(torch.nn.Module):
        def __init__(self, image_encoder, classification_head):
            super().__init__()
            self.image_encoder = image_encoder
            self.classification_head = classification_head
''')


@pytest.fixture
def modeling(tmp_path):
    """The stand-in ``src.modeling`` module, importable only while the test builds its pickles."""
    pkg = tmp_path / "legacy_code" / "src"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "modeling.py").write_text(MODELING)
    saved = {k: sys.modules.pop(k) for k in ("src", "src.modeling") if k in sys.modules}
    sys.path.insert(0, str(pkg.parent))
    try:
        import src.modeling

        yield src.modeling
    finally:
        _forget()
        sys.modules.update(saved)


def _clip(seed=0):
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**CFG)
    with torch.no_grad():
        for p in model.visual.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def _encoder(modeling, seed=0):
    from open_clip.transform import image_transform

    return modeling.ImageEncoder(_clip(seed), image_transform(32, is_train=True), image_transform(32, is_train=False))


@contextlib.contextmanager
def _old_open_clip_names():
    """Pickle open_clip's tower under the class name of open_clip < 2 (``open_clip.model.VisualTransformer``)."""
    import open_clip.model
    from open_clip.transformer import VisionTransformer

    before = (VisionTransformer.__module__, VisionTransformer.__qualname__, VisionTransformer.__name__)
    open_clip.model.VisualTransformer = VisionTransformer
    VisionTransformer.__module__, VisionTransformer.__qualname__, VisionTransformer.__name__ = (
        "open_clip.model", "VisualTransformer", "VisualTransformer")
    try:
        yield
    finally:
        VisionTransformer.__module__, VisionTransformer.__qualname__, VisionTransformer.__name__ = before
        del open_clip.model.VisualTransformer


def _forget():
    """Remove the stand-in package from sys.path and sys.modules: the original code is gone."""
    sys.path[:] = [p for p in sys.path if not p.endswith("legacy_code")]
    for k in ("src", "src.modeling"):
        sys.modules.pop(k, None)


def _expected(encoder):
    state = encoder.state_dict()
    return {k.removeprefix("model."): v.clone() for k, v in state.items() if k.startswith("model.visual.")}


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "pre-1.6-stream"])
def test_image_encoder_pickle_round_trip(modeling, tmp_path, zip_format):
    encoder = _encoder(modeling)
    want = _expected(encoder)
    path = tmp_path / "finetuned.pt"
    with _old_open_clip_names():
        torch.save(encoder, path, _use_new_zipfile_serialization=zip_format)
    _forget()
    with pytest.raises(Exception):  # the original code is gone: torch.load itself cannot read the file
        torch.load(path, weights_only=False)
    got = read_legacy_pickle(path)
    assert "src.modeling" not in sys.modules
    assert got.root_class == "src.modeling.ImageEncoder" and got.prefix == "model.visual."
    assert got.mapped_classes == {"open_clip.model.VisualTransformer": "open_clip.transformer.VisionTransformer"}
    assert set(got.state) == set(want)
    for k, v in want.items():
        assert got.state[k].dtype == v.dtype and torch.equal(got.state[k], v), k


def test_image_classifier_and_open_clip_layout(modeling, tmp_path):
    """A whole classifier (encoder + head) under today's class names; the tower comes out in pactmerge's layout."""
    encoder = _encoder(modeling, seed=3)
    classifier = modeling.ImageClassifier(encoder, modeling.ClassificationHead(True, torch.randn(10, 16)))
    path = tmp_path / "classifier.pt"
    torch.save(classifier, path)
    _forget()
    state, layout = load_encoder(path, legacy_pickle=True)
    assert layout == "open_clip"
    want = encoder.model.visual.state_dict()
    assert set(state) == set(want) and all(torch.equal(state[k], want[k]) for k in want)


class _Evil:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "builtins.eval", "subprocess.Popen"])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "pre-1.6-stream"])
def test_code_running_pickle_is_refused_unrun(tmp_path, how, zip_format):
    import subprocess

    marker = tmp_path / "marker"
    cmd = f"touch {marker}"
    call = {"os.system": (os.system, cmd), "builtins.eval": (eval, f"open({str(marker)!r}, 'w').close()"),
            "subprocess.Popen": (subprocess.Popen, ["touch", str(marker)])}[how]
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(2)}, "payload": _Evil(*call)}, path,
               _use_new_zipfile_serialization=zip_format)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError) as info:
        read_legacy_pickle(path)
    named = {"os.system": "posix.system", "builtins.eval": "builtins.eval", "subprocess.Popen": "subprocess.Popen"}[how]
    assert named in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_call_of_an_unknown_function_is_refused(tmp_path):
    """A function outside the denied modules is not called either: it is not a reconstructor the weights need."""
    path = tmp_path / "hub.pt"
    torch.save({"m": _Evil(torch.hub.load, "owner/repo")}, path)
    with pytest.raises(UnsafePickleError, match=r"calls torch\.hub\.load"):
        read_legacy_pickle(path)


def test_no_tower_and_damaged_files(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"a.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="no image tower"):
        read_legacy_pickle(path)
    # a zip archive cut short: its storages are gone
    encoder_file = tmp_path / "cut.pt"
    torch.save({"model.visual.conv1.weight": torch.randn(64, 64)}, encoder_file)
    import zipfile

    with zipfile.ZipFile(encoder_file) as zf, zipfile.ZipFile(tmp_path / "cut2.pt", "w") as out:
        for info in zf.infolist():
            if "/data/" not in info.filename:
                out.writestr(info, zf.read(info))
    with pytest.raises(CheckpointError, match=r"cut2\.pt: storage '0' is missing from the archive"):
        read_legacy_pickle(tmp_path / "cut2.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: neither a torch zip archive nor a torch pickle"):
        read_legacy_pickle(tmp_path / "junk.pt")


def test_import_cli_with_and_without_legacy_pickle(modeling, tmp_path, capsys):
    from pactmerge.checkpoints import CheckpointStore
    from pactmerge.cli import main
    from pactmerge.fileio import save_safetensors_atomic

    (tmp_path / "tiny_vit_legacy.json").write_text(json.dumps(CFG))
    (tmp_path / "base.yaml").write_text("data:\n  num_workers: 0\n")
    pre = _clip(seed=0).visual.state_dict()
    save_safetensors_atomic(tmp_path / "pre.safetensors", pre)
    encoder = _encoder(modeling, seed=1)
    want = encoder.model.visual.state_dict()
    with _old_open_clip_names():
        torch.save(encoder, tmp_path / "mnist.pt")
    _forget()

    def args(*extra):
        return ["import", "--store", str(tmp_path / "run"), "--model", "tiny_vit_legacy", "--model-config",
                str(tmp_path / "tiny_vit_legacy.json"), "--weights", str(tmp_path / "pre.safetensors"), "--config",
                str(tmp_path / "base.yaml"), "--task", f"mnist={tmp_path / 'mnist.pt'}", *extra]

    assert main(args()) == 2
    err = capsys.readouterr().err
    assert "mnist.pt: pickled objects" in err and "src.modeling.ImageEncoder" in err
    assert "--legacy-pickle" in err
    assert not (tmp_path / "run").exists()  # refused before the run directory was made
    assert main(args("--legacy-pickle")) == 0, capsys.readouterr().err
    stored = CheckpointStore(tmp_path / "run", create=False).load_state("finetuned/mnist")
    assert set(stored) == set(want) and all(torch.equal(stored[k], want[k]) for k in want)
