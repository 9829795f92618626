"""Hostile inputs: dtype mismatches, exotic dtypes, malformed safetensors headers."""

import json
import struct

import pytest
import torch

from pactmerge.errors import CheckpointError, MergeError
from pactmerge.merging import merge, merge_files

from fixtures import model_files


def _small():
    g = torch.Generator().manual_seed(0)
    pre = {"a.weight": torch.randn(6, 4, generator=g), "a.bias": torch.randn(6, generator=g), "count": torch.tensor([3])}
    fts = [{k: (v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()) for k, v in pre.items()}
           for _ in range(2)]
    return pre, fts


def _write(tmp_path, pre, fts):
    return model_files(tmp_path, pre, fts, prefix="ft")


def test_integer_finetuned_key_where_pretrained_is_float_is_refused(tmp_path):
    pre, fts = _small()
    fts[1]["a.weight"] = (fts[1]["a.weight"] * 100).to(torch.int32)
    with pytest.raises(MergeError, match=r"key 'a.weight' is int32 in model 2 but float32 in the pre-trained model"):
        merge(pre, fts, "tsvm")
    p, paths = _write(tmp_path, pre, fts)
    with pytest.raises(MergeError, match=r"key 'a.weight' is int32 in .*ft1.safetensors but float32 in .*pretrained.safetensors"):
        merge_files(p, paths, "tsvm")


def test_float_finetuned_key_where_pretrained_is_integer_is_refused():
    pre, fts = _small()
    fts[0]["count"] = fts[0]["count"].float()
    with pytest.raises(MergeError, match=r"key 'count' is float32 in model 1 but int64"):
        merge(pre, fts, "ta")


def test_uint16_buffers_are_copied_the_same_way_in_memory_and_streaming(tmp_path):
    pre, fts = _small()
    for sd in (pre, *fts):
        sd["ids"] = torch.arange(5).to(torch.uint16)
    p, paths = _write(tmp_path, pre, fts)
    mem, disk = merge(pre, fts, "ties"), merge_files(p, paths, "ties")
    assert "ids" not in mem.tau and "ids" not in disk.tau
    assert all(torch.equal(mem.tau[k], disk.tau[k]) for k in mem.tau)
    merged = mem.apply(pre)
    assert merged["ids"].dtype == torch.uint16 and merged["ids"].to(torch.int32).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_is_refused_the_same_way_in_memory_and_streaming(dtype, tmp_path):
    pre, fts = _small()
    for sd in (pre, *fts):
        sd["a.bias"] = sd["a.bias"].to(dtype)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(MergeError, match=rf"key 'a.bias' of the pre-trained model has dtype {name}.*convert"):
        merge(pre, fts, "tsvm")
    p, paths = _write(tmp_path, pre, fts)
    with pytest.raises(MergeError, match=rf"key 'a.bias' of .*pretrained.safetensors has dtype {name}.*convert"):
        merge_files(p, paths, "tsvm")
    only_ft = _small()
    only_ft[1][0]["a.bias"] = only_ft[1][0]["a.bias"].to(dtype)
    with pytest.raises(MergeError, match=rf"key 'a.bias' of model 1 has dtype {name}"):
        merge(only_ft[0], only_ft[1], "ta")


def _raw_safetensors(path, header: object, data: bytes = b"\0" * 96):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


@pytest.mark.parametrize(
    "header, needle",
    [
        ({"w": {"dtype": "F32", "shape": [-2, -3], "data_offsets": [0, 24]}}, "negative dimension"),
        ({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": ["0", 24]}}, "malformed data_offsets"),
        ({"w": {"dtype": "F32", "shape": "2x3", "data_offsets": [0, 24]}}, "malformed shape"),
        ({"w": {"dtype": "F32", "shape": [2, 3]}}, "malformed entry"),
        ({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 0]}}, "outside the file"),
        ({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 10**9]}}, "outside the file"),
        (["w"], "not a JSON object"),
        ({"w": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}, "dtype 'C64'"),
    ],
)
def test_malformed_headers_name_the_file(header, needle, tmp_path):
    bad = _raw_safetensors(tmp_path / "bad.safetensors", header)
    pre, fts = _small()
    p, paths = _write(tmp_path, pre, fts)
    with pytest.raises(CheckpointError) as exc:
        merge_files(p, [paths[0], bad], "ta")
    assert str(bad) in str(exc.value) and needle in str(exc.value)
