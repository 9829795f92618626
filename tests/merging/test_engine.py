"""The engine over the registry: shapes, dtypes, determinism, streaming, key policy, bad inputs."""

import json

import pytest
import torch
from safetensors.torch import save_file

from pactmerge.errors import CheckpointError, MergeError
from pactmerge.merging import (
    KeyPolicy,
    TaskVector,
    alpha_grid,
    available_methods,
    get_method,
    layer_of,
    merge,
    merge_files,
)

PACT_SMALL = {"K": 2, "k": 1}


def _pact(method):
    return dict(PACT_SMALL) if method.startswith("pact+") else None


@pytest.mark.parametrize("method", available_methods())
def test_every_method_keeps_shapes_dtypes_and_is_deterministic(method, models):
    pre, fts = models
    res = merge(pre, fts, method, pact=_pact(method))
    floats = [k for k, v in pre.items() if v.is_floating_point()]
    assert list(res.tau) == floats
    for k in floats:
        assert res.tau[k].shape == pre[k].shape and res.tau[k].dtype == torch.float32
        assert torch.isfinite(res.tau[k]).all()
    again = merge(pre, fts, method, pact=_pact(method))
    assert all(torch.equal(res.tau[k], again.tau[k]) for k in floats)
    json.dumps({"params": res.params, "diagnostics": res.diagnostics, "timings": res.timings})
    merged = res.apply(pre, 0.5)
    assert all(merged[k].dtype == pre[k].dtype for k in pre)
    assert torch.equal(merged["num_batches_tracked"], pre["num_batches_tracked"])
    assert res.default_alpha == get_method(method).default_alpha


@pytest.mark.parametrize("method", available_methods())
def test_task_order_does_not_matter(method, models):
    pre, fts = models
    assert get_method(method).symmetric
    a = merge(pre, fts, method, pact=_pact(method))
    b = merge(pre, fts[::-1], method, pact=_pact(method))
    for k in a.tau:
        assert torch.allclose(a.tau[k], b.tau[k], rtol=1e-4, atol=1e-5), k


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["tsvm", "pact+iso_c", "ties"])
def test_half_precision_inputs(method, dtype, models):
    pre, fts = models
    cast = lambda sd: {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    res = merge(cast(pre), [cast(f) for f in fts], method, pact=_pact(method))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in res.tau.values())
    merged = res.apply(cast(pre))
    assert all(merged[k].dtype == (dtype if pre[k].is_floating_point() else pre[k].dtype) for k in pre)


@pytest.mark.parametrize("method", ["ties", "pact+tsvm", "iso_cts"])
def test_streaming_from_files_equals_in_memory(method, models, tmp_path):
    pre, fts = models
    save_file(pre, str(tmp_path / "pre.safetensors"))
    paths = []
    for i, f in enumerate(fts):
        paths.append(tmp_path / f"ft{i}.safetensors")
        save_file(f, str(paths[-1]))
    mem = merge(pre, fts, method, pact=_pact(method))
    disk = merge_files(tmp_path / "pre.safetensors", paths, method, pact=_pact(method))
    assert list(mem.tau) == list(pre.keys())[:-1]  # the pre-trained order, integer buffer excluded
    assert sorted(mem.tau) == sorted(disk.tau)
    assert all(torch.equal(mem.tau[k], disk.tau[k]) for k in mem.tau)  # bitwise
    assert mem.diagnostics.get("pact") == disk.diagnostics.get("pact")


def test_float64_compute_dtype_agrees(models):
    pre, fts = models
    a = merge(pre, fts, "pact+tsvm", pact=PACT_SMALL)
    b = merge(pre, fts, "pact+tsvm", pact=PACT_SMALL, compute_dtype=torch.float64)
    for k in a.tau:
        assert torch.allclose(a.tau[k], b.tau[k], rtol=1e-4, atol=1e-6)
    a = merge(pre, fts, "ties")
    b = merge(pre, fts, "ties", compute_dtype=torch.float64)
    assert sum(int(((a.tau[k] - b.tau[k]).abs() > 1e-5).sum()) for k in a.tau) <= 3  # a threshold tie may flip


def test_iso_cts_extreme_fractions(models):
    pre, fts = models
    key = "transformer.resblocks.0.attn.out_proj.weight"
    iso_c = merge(pre, fts, "iso_c").tau[key]
    assert torch.allclose(merge(pre, fts, "iso_cts", params={"f": 1.0}).tau[key], iso_c, atol=1e-5)
    # c = 0 for 12-wide keys (task subspaces only); the 5- and 8-wide keys would get c = -1 (refused)
    small = KeyPolicy(exclude=("positional_embedding", "proj"))
    only_tasks = merge(pre, fts, "iso_cts", params={"f": 0.0}, key_policy=small).tau[key]
    s = torch.linalg.svdvals(only_tasks)
    assert torch.isfinite(only_tasks).all() and (s.max() - s.min()) / s.max() < 1e-4


def test_key_policy_kinds_and_options():
    pol = KeyPolicy()
    assert pol.kind("transformer.resblocks.0.attn.in_proj_weight", torch.zeros(6, 2)) == "matrix"
    assert pol.kind("conv1.weight", torch.zeros(4, 3, 2, 2)) == "vector"
    assert KeyPolicy(conv_as_matrix=True).kind("conv1.weight", torch.zeros(4, 3, 2, 2)) == "matrix"
    assert pol.kind("ln.bias", torch.zeros(4)) == "vector"
    assert pol.kind("n", torch.tensor(3)) == "int"
    assert KeyPolicy(exclude=("*proj",)).kind("proj", torch.zeros(4, 2)) == "vector"
    assert layer_of("transformer.resblocks.3.mlp.c_fc.weight") == "transformer.resblocks.3"
    assert layer_of("conv1.weight") == "conv1" and layer_of("proj") == "proj"


def test_conv_as_matrix_changes_svd_methods_only_when_asked(models):
    pre, fts = models
    plain = merge(pre, fts, "iso_c")
    conv = merge(pre, fts, "iso_c", key_policy=KeyPolicy(conv_as_matrix=True))
    mean = sum(f["conv1.weight"] - pre["conv1.weight"] for f in fts) / len(fts)
    assert torch.allclose(plain.tau["conv1.weight"], mean, atol=1e-6)
    assert conv.tau["conv1.weight"].shape == (12, 3, 2, 2)
    s = torch.linalg.svdvals(conv.tau["conv1.weight"].reshape(12, -1))
    assert (s.max() - s.min()) / s.max() < 1e-5  # decomposed as a (12, 12) matrix: isotropic


def test_pact_include_restricts_pact(models):
    pre, fts = models
    res = merge(pre, fts, "pact+task_arithmetic", pact={"K": 2, "k": 1}, key_policy=KeyPolicy(pact_include=("proj",)))
    assert list(res.diagnostics["pact"]["keys"]) == ["proj"]
    ta = merge(pre, fts, "task_arithmetic")
    key = "transformer.resblocks.0.mlp.c_fc.weight"
    assert torch.equal(res.tau[key], ta.tau[key]) and not torch.equal(res.tau["proj"], ta.tau["proj"])


def test_task_vector_algebra(models):
    pre, fts = models
    tvs = [TaskVector.from_state_dicts(pre, f) for f in fts]
    assert "num_batches_tracked" not in tvs[0]
    total = sum(tvs)
    ta = merge(pre, fts, "task_arithmetic")
    assert all(torch.allclose(total[k], ta.tau[k], atol=1e-6) for k in total.keys())
    diff = tvs[0] - tvs[1] + tvs[1]
    assert all(torch.allclose(diff[k], tvs[0][k], atol=1e-6) for k in diff)
    assert (-tvs[0] + tvs[0]).norm() == 0.0 and (2 * tvs[0]).norm() == pytest.approx(2 * tvs[0].norm())
    applied = (0.5 * tvs[0]).apply_to(pre, 2.0)
    assert torch.allclose(applied["proj"], fts[0]["proj"], atol=1e-6)
    assert torch.equal(applied["num_batches_tracked"], pre["num_batches_tracked"])


def test_registry_names_aliases_and_grids():
    names = available_methods()
    for base in ["weight_averaging", "task_arithmetic", "ties", "tsvm", "iso_c", "iso_cts"]:
        assert base in names and f"pact+{base}" in names
        assert get_method(base).paper
    assert get_method("TSV-M").name == "tsvm" and get_method("pact+ta").name == "pact+task_arithmetic"
    assert get_method("iso-cts").name == "iso_cts" and get_method("tsv_m").name == "tsvm"
    with pytest.raises(MergeError, match="known methods: weight_averaging.*Did you mean tsvm"):
        get_method("tsvmm")
    assert alpha_grid("ties")[0] == 0.05 and alpha_grid("pact+ta")[-1] == 1.0 and len(alpha_grid("ta")) == 20
    assert alpha_grid("weight_averaging") == [1.0]
    assert alpha_grid("pact+iso_c") == [round(0.1 * i, 10) for i in range(21)]


def test_params_are_validated(models):
    pre, fts = models
    with pytest.raises(MergeError, match="unknown parameter 'q'.*valid parameters are: oversample, power_iters"):
        merge(pre, fts, "tsvm", params={"q": 3})
    with pytest.raises(MergeError, match="parameter 'k': expects a number"):
        merge(pre, fts, "ties", params={"k": "lots"})
    with pytest.raises(MergeError, match="parameter 'protect': must be one of"):
        merge(pre, fts, "pact+tsvm", pact={"protect": "none"})
    with pytest.raises(MergeError, match="parameter 'svd': must be one of"):
        merge(pre, fts, "tsvm", params={"svd": "fast"})
    res = merge(pre, fts, "pact+ties", params={"threshold_scope": "per_key", "seed": 3}, pact={"K": 2, "k": 1})
    assert res.params["threshold_scope"] == "per_key" and res.params["seed"] == 3 and res.params["k"] == 20.0
    assert res.pact_params["K"] == 2 and res.pact_params["k"] == 1 and "seed" not in res.pact_params


def test_bad_inputs_name_the_key_and_the_model(models, tmp_path):
    pre, fts = models
    with pytest.raises(MergeError, match="device 'gpu0'"):
        merge(pre, fts, "ta", device="gpu0")
    with pytest.raises(MergeError, match="no fine-tuned models"):
        merge(pre, [], "tsvm")
    broken = dict(fts[1])
    del broken["proj"]
    with pytest.raises(MergeError, match="'proj' is missing from model 2"):
        merge(pre, [fts[0], broken], "ta")
    bad_shape = dict(fts[2], proj=torch.zeros(3, 3))
    with pytest.raises(MergeError, match=r"'proj' has shape \[3, 3\] in model 3"):
        merge(pre, [fts[0], fts[1], bad_shape], "ta")
    nan = dict(fts[0])
    nan["ln_pre.bias"] = torch.full((12,), float("nan"))
    with pytest.raises(MergeError, match="'ln_pre.bias' of model 1 contains NaN"):
        merge(pre, [nan], "ta")
    zero_pre = dict(pre, proj=torch.zeros(12, 8))
    with pytest.raises(MergeError, match="'proj' is all zeros"):
        merge(zero_pre, fts, "pact+tsvm", pact=PACT_SMALL)
    with pytest.raises(MergeError, match="K=9 is larger than min"):
        merge(pre, fts, "pact+tsvm", pact={"K": 9})
    save_file(pre, str(tmp_path / "pre.safetensors"))
    save_file(dict(fts[0], proj=torch.zeros(3, 3)), str(tmp_path / "ft.safetensors"))
    with pytest.raises(MergeError, match=r"'proj' has shape \[3, 3\] in .*ft.safetensors"):
        merge_files(tmp_path / "pre.safetensors", [tmp_path / "ft.safetensors"], "ta")
    (tmp_path / "trunc.safetensors").write_bytes((tmp_path / "pre.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="trunc.safetensors"):
        merge_files(tmp_path / "pre.safetensors", [tmp_path / "trunc.safetensors"], "ta")
    with pytest.raises(CheckpointError, match="no such file"):
        merge_files(tmp_path / "missing.safetensors", [tmp_path / "pre.safetensors"], "ta")


def test_alpha_zero_returns_the_pretrained_model(models):
    pre, fts = models
    res = merge(pre, fts, "iso_cts")
    merged = res.apply(pre, 0.0)
    assert all(torch.equal(merged[k], pre[k]) for k in pre)
    assert torch.allclose(res.apply(pre)["proj"], pre["proj"] + 1.3 * res.tau["proj"])


def test_larger_encoder_smoke(make_models):
    pre, fts = make_models(width=24, layers=1, T=5)
    res = merge(pre, fts, "pact+iso_cts", params={"svd": "randomized"}, pact={"K": 3, "k": 2})
    assert res.diagnostics["pact"]["overall"]["entries"] == 5 * len(res.diagnostics["pact"]["keys"])


def test_merge_files_reads_bf16_safetensors_and_torch_files(models, tmp_path):
    pre, fts = models
    bf = lambda sd: {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in sd.items()}
    save_file(bf(pre), str(tmp_path / "pre.safetensors"))
    save_file(bf(fts[0]), str(tmp_path / "a.safetensors"))
    torch.save(bf(fts[1]), tmp_path / "b.pt")
    disk = merge_files(tmp_path / "pre.safetensors", [tmp_path / "a.safetensors", tmp_path / "b.pt"], "tsvm")
    mem = merge(bf(pre), [bf(fts[0]), bf(fts[1])], "tsvm")
    assert all(torch.equal(mem.tau[k], disk.tau[k]) for k in mem.tau)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable safetensors file"):
        merge_files(tmp_path / "pre.safetensors", [tmp_path / "junk.safetensors"], "ta")


@pytest.mark.parametrize("svd", ["exact", "randomized"])
def test_task_by_task_merge_equals_all_tasks_at_once_bitwise(svd, tmp_path):
    """TSV-M's matrix keys and every mean-of-tasks vector key are merged a few tasks at a time
    (never holding all T task vectors); the result is the all-at-once rule's, bit for bit."""
    from pactmerge.merging.methods import tsvm
    from pactmerge.merging.spec import KeyContext, mean_of_tasks

    g = torch.Generator().manual_seed(0)
    pre = {"a.weight": torch.randn(24, 16, generator=g), "conv.weight": torch.randn(6, 2, 3, 3, generator=g),
           "a.bias": torch.randn(24, generator=g)}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in pre.items()} for _ in range(5)]
    ids = [f"task{i}" for i in range(5)]
    params = {"svd": svd, "seed": 3}
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # tasks in chunks of 2, 2, 1
    try:
        res = merge(pre, fts, "tsvm", params=params, task_ids=ids)
        for i, sd in enumerate([pre, *fts]):
            save_file(sd, str(tmp_path / f"{i}.safetensors"))
        disk = merge_files(tmp_path / "0.safetensors", [tmp_path / f"{i}.safetensors" for i in range(1, 6)], "tsvm",
                           params=params, task_ids=ids)
    finally:
        torch.set_num_threads(before)
    taus = {k: torch.stack([ft[k] - pre[k] for ft in fts]) for k in pre}
    p = get_method("tsvm").params_cls(**params)
    whole = tsvm.merge_matrices(taus["a.weight"][:, None], p, KeyContext(["a.weight"], {}, tuple(ids)))[0]
    assert torch.equal(res.tau["a.weight"], whole) and torch.equal(disk.tau["a.weight"], whole)
    for k in ("conv.weight", "a.bias"):  # conv kernels are vector keys by default: the mean
        assert torch.equal(res.tau[k], mean_of_tasks(taus[k])) and torch.equal(disk.tau[k], res.tau[k])
