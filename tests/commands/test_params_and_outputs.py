"""The pieces the commands share: merge-parameter flags from the core's dataclasses, and weights
written with their JSON sidecar under one naming rule."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pactmerge.cli import build_parser
from pactmerge.errors import ConfigError
from pactmerge.fileio import sha256_file, sidecar_path, write_weights_with_sidecar


def _parse(command, *argv):
    return build_parser(command).parse_args([command, *argv])


def test_transfer_takes_the_pact_flags_merge_takes():
    from pactmerge.commands._params import collect_params

    args = _parse("transfer", "--task-vector", "a=x.safetensors", "--alpha", "1", "--out", "o.safetensors",
                  "--pact-K", "3", "--pact-protect", "self", "--pact-param", "k=2")
    assert collect_params(args, items=args.pact_param, option="--pact-param", all_pact=True) == (
        {}, {"K": 3, "protect": "self", "k": 2})
    args = _parse("transfer", "--task-vector", "a=x", "--alpha", "1", "--out", "o.safetensors",
                  "--pact-K", "3", "--pact-param", "K=4")
    with pytest.raises(ConfigError, match=r"'K' given twice with different values \(--pact-param K=4 and --pact-K 3\)"):
        collect_params(args, items=args.pact_param, option="--pact-param", all_pact=True)
    merge = _parse("merge", "--method", "pact+ties", "--pact-K", "3", "--ties-k", "20", "--param", "pact.k=2")
    spec = type("Spec", (), {"base": "ties", "name": "pact+ties"})()
    assert collect_params(merge, spec) == ({"k": 20}, {"k": 2, "K": 3})


def test_bare_field_names_are_refused_by_merge_only():
    from pactmerge.commands._params import refuse_ambiguous

    with pytest.raises(ConfigError, match="--K is ambiguous.*--pact-K"):
        refuse_ambiguous(_parse("merge", "--method", "tsvm", "--K", "3"))
    analyze = _parse("analyze", "--store", "r", "--out", "o", "--K", "3")  # analyze's own core rank
    refuse_ambiguous(analyze)
    assert analyze.K == 3


def test_weights_and_sidecar_are_written_together(tmp_path):
    out = tmp_path / "merged.safetensors"
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    side = write_weights_with_sidecar(out, tensors, lambda sha: {"method": "ties", "sha256": sha},
                                      metadata={"pactmerge_method": "ties"})
    assert side == sidecar_path(out) == tmp_path / "merged.safetensors.json"
    assert torch.equal(load_file(str(out))["w"], tensors["w"])
    assert json.loads(side.read_text()) == {"method": "ties", "sha256": sha256_file(out)}

    # a sidecar that cannot be written as JSON: nothing is replaced, no temporary file is left
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(TypeError):
        write_weights_with_sidecar(out, {"w": torch.zeros(2)}, {"bad": object()})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_files_hashed_side_by_side_give_each_files_own_digest(tmp_path):
    """``sha256_files`` maps each path to the digest of its own bytes, with one worker or several
    (files of different sizes, so a mix-up between workers would show)."""
    import hashlib

    from pactmerge.fileio import sha256_files

    contents = [bytes([i]) * (i * 700_000 + 3) for i in range(5)]
    paths = []
    for i, data in enumerate(contents):
        paths.append(tmp_path / f"f{i}.bin")
        paths[-1].write_bytes(data)
    expected = {str(p): hashlib.sha256(d).hexdigest() for p, d in zip(paths, contents)}
    assert sha256_files(paths, workers=1) == expected
    assert sha256_files(paths, workers=3) == expected
    assert list(sha256_files(paths, workers=3)) == [str(p) for p in paths]
