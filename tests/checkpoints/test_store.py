import json
import multiprocessing as mp

import pytest
import torch

from pactmerge.checkpoints import CheckpointStore, state_sha256
from pactmerge.errors import CheckpointError

CFG = {"name": "tiny", "embed_dim": 32, "vision_cfg": {"width": 32, "layers": 2}}


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(4, generator=g).bfloat16(),
            "bn.num_batches_tracked": torch.tensor(7)}


def test_round_trip_and_manifest(tmp_path):
    store = CheckpointStore(tmp_path / "run")
    store.bind(CFG, "abc")
    sd = _state()
    path = store.save_state("finetuned/mnist", sd, {"task": "mnist", "steps": 10, "recipe": {"lr": 1e-5}})
    assert path == tmp_path / "run" / "finetuned" / "mnist.safetensors" and store.has("finetuned/mnist")
    back = store.load_state("finetuned/mnist")
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) and back[k].dtype == sd[k].dtype for k in sd)
    entry = store.entry("finetuned/mnist")
    assert entry["kind"] == "finetuned" and entry["task"] == "mnist" and entry["steps"] == 10
    assert len(entry["sha256"]) == 64 and "torch" in entry["versions"]
    store.update_meta("finetuned/mnist", metrics={"val/acc": 0.9})
    reopened = CheckpointStore(tmp_path / "run", create=False)
    assert reopened.entry("finetuned/mnist")["metrics"] == {"val/acc": 0.9}
    assert reopened.names("finetuned/") == ["finetuned/mnist"]
    head = torch.randn(10, 32)
    store.save_head("mnist", head, {"kind_of_head": "orthonormal"})
    assert store.has_head("mnist") and torch.equal(store.load_head("mnist"), head)
    assert store.lightning_dir("finetuned/mnist").is_dir()
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["identity"]["pretrained_sha256"] == "abc"


def test_hash_mismatch_is_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    path = store.save_state("joint", _state())
    other = CheckpointStore(tmp_path / "o").save_state("joint", _state(1))
    path.write_bytes(other.read_bytes())
    with pytest.raises(CheckpointError, match="does not match the manifest"):
        store.load_state("joint")


def test_other_model_or_weights_is_refused(tmp_path):
    CheckpointStore(tmp_path).bind(CFG, "abc")
    store = CheckpointStore(tmp_path)
    store.bind(CFG, "abc")  # same identity: fine
    with pytest.raises(CheckpointError, match="pretrained_sha256: store has 'abc', given 'def'"):
        store.bind(CFG, "def")
    with pytest.raises(CheckpointError, match=r"vision_cfg\.width: store has 32, given 64"):
        store.bind({**CFG, "vision_cfg": {"width": 64, "layers": 2}}, "abc")


def test_missing_store_names_and_entries(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint store"):
        CheckpointStore(tmp_path / "none", create=False)
    store = CheckpointStore(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint 'joint'"):
        store.load_state("joint")
    with pytest.raises(CheckpointError, match="invalid checkpoint name"):
        store.save_state("../evil", _state())


def _writer(root, i):
    CheckpointStore(root).save_state(f"finetuned/t{i}", _state(i))


def test_concurrent_writers_keep_every_entry(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path, i)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert CheckpointStore(tmp_path).names("finetuned/") == [f"finetuned/t{i}" for i in range(6)]


def test_state_sha256_is_content_based():
    a, b = _state(), _state()
    assert state_sha256(a) == state_sha256(b)
    b["a.weight"][0, 0] += 1
    assert state_sha256(a) != state_sha256(b)
