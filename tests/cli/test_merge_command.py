"""``pactmerge merge`` on good input: the written file equals the in-memory merge; the sidecar records it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

import pactmerge
from fixtures import file_sha256
from pactmerge.merging import available_methods, merge


def _assert_same_state(actual: dict, expected: dict, exact: bool) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, key
        if exact:
            assert torch.equal(actual[key], expected[key]), key
        else:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


CASES = [
    # (method, CLI flags, the same as merge() params and pact, alpha flag)
    ("tsvm", ["--svd", "exact"], {"svd": "exact"}, None, None),
    ("ties", ["--ties-k", "30"], {"k": 30.0}, None, 0.4),
    ("pact+iso_c", ["--pact-K", "4", "--pact-k", "2", "--svd", "randomized", "--seed", "3"],
     {"svd": "randomized", "seed": 3}, {"K": 4, "k": 2}, 0.9),
    ("pact+tsvm", ["--param", "pact.K=4", "--param", "pact.k=2", "--pact-protect", "self"], {},
     {"K": 4, "k": 2, "protect": "self"}, None),
    ("pact+tsvm", ["--param", "pact={K: 4, k: 2}", "--svd", "randomized"], {"svd": "randomized"}, {"K": 4, "k": 2},
     None),
    ("pact+ties", ["--ties-k", "30", "--pact-K", "4", "--pact-k", "2", "--param", "threshold_scope=per_key"],
     {"k": 30.0, "threshold_scope": "per_key"}, {"K": 4, "k": 2}, None),
]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "in-memory"])
@pytest.mark.parametrize("method,flags,params,pact,alpha", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_output_equals_in_memory_merge(write_models, out_dir, cli, stream, method, flags, params, pact, alpha):
    models = write_models(T=3)
    out = out_dir / "merged.safetensors"
    argv = [*models.argv(), "--method", method, *flags, "--out", out, "--device", "cpu"]
    argv += ["--stream" if stream else "--no-stream"] + ([] if alpha is None else ["--alpha", str(alpha)])

    rc, stdout, stderr = cli(*argv)

    assert rc == 0, stderr
    # the CLI seeds randomized SVDs by the files' sha256, so the result does not depend on their order
    task_ids = [file_sha256(p) for p in models.finetuned_paths]
    res = merge(models.pretrained, models.finetuned, method, params=params, pact=pact, device="cpu", task_ids=task_ids)
    used_alpha = res.default_alpha if alpha is None else alpha
    # the in-memory path runs the same code, so it must agree bit for bit; streaming may batch differently
    _assert_same_state(load_file(str(out)), res.apply(models.pretrained, alpha=used_alpha), exact=not stream)
    assert method in stdout and str(out) in stdout

    sidecar = json.loads((out_dir / "merged.safetensors.json").read_text())
    assert sidecar["method"] == method
    assert sidecar["alpha"] == pytest.approx(used_alpha)
    assert sidecar["params"] == json.loads(json.dumps(res.params))
    assert sidecar["pact_params"] == json.loads(json.dumps(res.pact_params))
    assert (sidecar["pact_params"] is None) == (not method.startswith("pact+"))
    assert sidecar["pactmerge_version"] == pactmerge.__version__
    assert sidecar["stream"] is stream
    assert sidecar["inputs"]["pretrained"] == {"path": str(models.pretrained_path), "sha256": file_sha256(models.pretrained_path)}
    assert [e["sha256"] for e in sidecar["inputs"]["finetuned"]] == task_ids
    assert sidecar["diagnostics"] == json.loads(json.dumps(res.diagnostics))
    assert sidecar["timings"]["total_s"] > 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["merged.safetensors", "merged.safetensors.json"]


def test_pact_k_does_not_reach_ties(write_models, out_dir, cli):
    """PACT's rank k and TIES' percentage k live in separate namespaces: pact+ties with PACT's k changed
    keeps exactly TIES' default share of entries, and the sidecar records the two apart."""
    from pactmerge.merging.methods.ties import Params as TiesParams

    models = write_models(T=2)
    out = out_dir / "merged.safetensors"
    rc, _, stderr = cli(*models.argv(), "--method", "pact+ties", "--pact-k", "3", "--pact-K", "4", "--out", out)
    assert rc == 0, stderr
    sidecar = json.loads((out_dir / "merged.safetensors.json").read_text())
    assert sidecar["params"]["k"] == TiesParams().k == 20.0
    assert sidecar["pact_params"]["k"] == 3 and sidecar["pact_params"]["K"] == 4
    expected = merge(models.pretrained, models.finetuned, "pact+ties", pact={"k": 3, "K": 4},
                     task_ids=[file_sha256(p) for p in models.finetuned_paths])
    assert expected.params["k"] == 20.0
    _assert_same_state(load_file(str(out)), expected.apply(models.pretrained), exact=False)


def test_finetuned_order_does_not_change_a_randomized_merge(write_models, out_dir, cli):
    models = write_models(T=3)
    flags = ["--method", "pact+tsvm", "--svd", "randomized", "--seed", "5", "--pact-K", "4", "--pact-k", "2"]
    a, b = out_dir / "a.safetensors", out_dir / "b.safetensors"
    assert cli(*models.argv(), *flags, "--out", a)[0] == 0
    reversed_argv = ["--pretrained", models.pretrained_path, "--finetuned", *models.finetuned_paths[::-1]]
    assert cli(*reversed_argv, *flags, "--out", b)[0] == 0
    _assert_same_state(load_file(str(a)), load_file(str(b)), exact=False)


def test_flags_are_derived_from_the_parameter_dataclasses(cli, capsys):
    """Every field of PACTConfig, of each method's Params and of SVDOptions has its flag; no hand-kept table."""
    import dataclasses

    from pactmerge.commands import merge as merge_cmd
    from pactmerge.merging import PACTConfig, SVDOptions
    from pactmerge.merging.registry import METHODS

    with pytest.raises(SystemExit):
        cli("--help")
    help_text = capsys.readouterr().out
    svd = [f.name for f in dataclasses.fields(SVDOptions)]
    expected = ["--" + n.replace("_", "-") for n in svd]
    expected += ["--pact-" + f.name.replace("_", "-") for f in dataclasses.fields(PACTConfig)]
    for name, spec in METHODS.items():
        expected += ["--" + name.replace("_", "-") + "-" + f.name.replace("_", "-")
                     for f in dataclasses.fields(spec.params_cls) if f.name not in svd]
    assert {"--pact-K", "--pact-k", "--pact-protect", "--ties-k", "--iso-cts-f", "--power-iters"} <= set(expected)
    for flag in expected:
        assert flag in help_text, flag
    assert not hasattr(merge_cmd, "_FLAG_PARAMS")


def test_half_precision_inputs_give_half_precision_output(write_models, out_dir, cli):
    models = write_models(T=2, dtype=torch.float16)
    out = out_dir / "merged.safetensors"
    rc, _, stderr = cli(*models.argv(), "--method", "iso_c", "--out", out, "--alpha", "1.1")
    assert rc == 0, stderr
    expected = merge(models.pretrained, models.finetuned, "iso_c").apply(models.pretrained, alpha=1.1)
    got = load_file(str(out))
    assert all(v.dtype == torch.float16 for v in got.values())
    _assert_same_state(got, expected, exact=False)


def test_torch_weights_file_loads_without_pickle(write_models, out_dir, cli):
    models = write_models(T=2)
    pt = models.pretrained_path.with_suffix(".pt")
    torch.save(models.pretrained, pt)
    out = out_dir / "merged.safetensors"
    rc, _, stderr = cli("--pretrained", pt, "--finetuned", *models.finetuned_paths, "--method", "task_arithmetic",
                        "--alpha", "0.5", "--out", out)
    assert rc == 0, stderr
    expected = merge(models.pretrained, models.finetuned, "task_arithmetic").apply(models.pretrained, alpha=0.5)
    _assert_same_state(load_file(str(out)), expected, exact=True)
    assert json.loads((out_dir / "merged.safetensors.json").read_text())["stream"] is False


@dataclass
class Provenance:
    """An arbitrary picklable object, which ``weights_only`` loading refuses."""

    note: str


def test_pickled_file_loads_with_trust_pickle(write_models, out_dir, cli):
    models = write_models(T=2)
    pickled = models.finetuned_paths[0].with_suffix(".ckpt")
    torch.save({"state_dict": models.finetuned[0], "provenance": Provenance("task 0")}, pickled)
    out = out_dir / "merged.safetensors"
    argv = ["--pretrained", models.pretrained_path, "--finetuned", pickled, models.finetuned_paths[1],
            "--method", "task_arithmetic", "--alpha", "0.5", "--out", out]

    rc, _, stderr = cli(*argv, "--trust-pickle")

    assert rc == 0, stderr
    expected = merge(models.pretrained, models.finetuned, "task_arithmetic").apply(models.pretrained, alpha=0.5)
    _assert_same_state(load_file(str(out)), expected, exact=True)


def test_list_methods_prints_the_registry(cli):
    rc, stdout, _ = cli("--list-methods")
    assert rc == 0
    assert stdout.split() == list(available_methods())
    assert {"tsvm", "iso_cts", "pact+tsvm", "pact+iso_c"} <= set(stdout.split())
