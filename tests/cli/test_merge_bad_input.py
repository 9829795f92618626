"""``pactmerge merge`` on bad input: exit code 2, a message naming the key or file, and nothing written."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from fixtures import file_sha256

from pactmerge.merging import available_methods

STREAM_MODES = pytest.mark.parametrize("mode", ["--stream", "--no-stream"])
MATRIX_KEY = "visual.transformer.resblocks.1.attn.out_proj.weight"
VECTOR_KEY = "visual.transformer.resblocks.0.ln_2.bias"


def refused(cli, out_dir, *argv) -> str:
    """Run the command, check it failed cleanly with nothing in ``out_dir``; return stderr."""
    rc, stdout, stderr = cli(*argv, "--out", out_dir / "merged.safetensors")
    assert rc == 2, (stdout, stderr)
    assert "error:" in stderr
    assert list(out_dir.iterdir()) == [], "an output (or a temporary file) was left behind"
    return stderr


@STREAM_MODES
def test_missing_key_names_key_and_file(write_models, out_dir, cli, mode):
    models = write_models(edit_task=lambda sd: sd.pop(MATRIX_KEY))
    err = refused(cli, out_dir, *models.argv(), "--method", "tsvm", mode)
    assert MATRIX_KEY in err and str(models.finetuned_paths[1]) in err


@STREAM_MODES
def test_extra_key_names_key_and_file(write_models, out_dir, cli, mode):
    models = write_models(edit_task=lambda sd: sd.update({"visual.extra.weight": torch.zeros(2, 2)}))
    err = refused(cli, out_dir, *models.argv(), "--method", "tsvm", mode)
    assert "visual.extra.weight" in err and str(models.finetuned_paths[1]) in err


@STREAM_MODES
def test_shape_mismatch_names_key_and_file(write_models, out_dir, cli, mode):
    models = write_models(edit_task=lambda sd: sd.update({MATRIX_KEY: sd[MATRIX_KEY][:, :-1].contiguous()}))
    err = refused(cli, out_dir, *models.argv(), "--method", "iso_c", mode)
    assert MATRIX_KEY in err and str(models.finetuned_paths[1]) in err


@STREAM_MODES
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("where", ["finetuned", "pretrained"])
def test_non_finite_input_is_refused(write_models, out_dir, cli, mode, bad, where):
    def poison(sd):
        sd[VECTOR_KEY][3] = bad
        sd[MATRIX_KEY][2, 5] = bad

    models = write_models(**{"edit_task" if where == "finetuned" else "edit_pre": poison})
    err = refused(cli, out_dir, *models.argv(), "--method", "task_arithmetic", mode)
    assert "NaN or Inf" in err
    assert VECTOR_KEY in err or MATRIX_KEY in err
    assert str(models.finetuned_paths[1] if where == "finetuned" else models.pretrained_path) in err


def test_empty_list_of_models(write_models, out_dir, cli):
    models = write_models(T=1)
    err = refused(cli, out_dir, "--pretrained", models.pretrained_path, "--finetuned", "--method", "tsvm")
    assert "--finetuned" in err


@pytest.mark.parametrize("flag", ["--pact-K", "--pact-k"])
def test_rank_larger_than_the_matrix(write_models, out_dir, cli, flag):
    models = write_models(T=2)
    # 17 is the smallest matrix side (positional_embedding), 40 exceeds every side
    err = refused(cli, out_dir, *models.argv(), "--method", "pact+tsvm", flag, "40")
    assert flag.removeprefix("--pact-") in err and "40" in err


def test_zero_pretrained_matrix_under_pact(write_models, out_dir, cli):
    models = write_models(edit_pre=lambda sd: sd[MATRIX_KEY].zero_())
    err = refused(cli, out_dir, *models.argv(), "--method", "pact+iso_c", "--pact-K", "4", "--pact-k", "2")
    assert MATRIX_KEY in err
    # the same files are fine for a method without PACT
    rc, _, stderr = cli(*models.argv(), "--method", "iso_c", "--out", out_dir / "ok.safetensors")
    assert rc == 0, stderr


def test_unknown_method_lists_known_ones(write_models, out_dir, cli):
    models = write_models(T=2)
    err = refused(cli, out_dir, *models.argv(), "--method", "tsvmm")
    assert "tsvmm" in err
    assert all(name in err for name in available_methods())


def test_missing_file(write_models, out_dir, cli):
    models = write_models(T=2)
    ghost = models.pretrained_path.parent / "no_such_task.safetensors"
    err = refused(cli, out_dir, *models.argv(), str(ghost), "--method", "tsvm")
    assert str(ghost) in err


@STREAM_MODES
def test_truncated_safetensors(write_models, out_dir, cli, mode):
    models = write_models(T=2)
    path = models.finetuned_paths[0]
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    err = refused(cli, out_dir, *models.argv(), "--method", "tsvm", mode)
    assert str(path) in err


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_random_bytes(write_models, out_dir, cli, suffix):
    models = write_models(T=2)
    junk = models.pretrained_path.parent / f"junk{suffix}"
    junk.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())
    err = refused(cli, out_dir, *models.argv(), str(junk), "--method", "task_arithmetic")
    assert str(junk) in err


@dataclass
class Provenance:
    """An arbitrary picklable object, which ``weights_only`` loading refuses."""

    note: str


def test_pickled_file_needs_trust_pickle(write_models, out_dir, cli):
    models = write_models(T=2)
    pickled = models.finetuned_paths[0].with_suffix(".ckpt")
    torch.save({"state_dict": models.finetuned[0], "provenance": Provenance("task 0")}, pickled)
    err = refused(cli, out_dir, "--pretrained", models.pretrained_path, "--finetuned", pickled, "--method", "task_arithmetic")
    assert str(pickled) in err and "--trust-pickle" in err


def test_stream_needs_safetensors(write_models, out_dir, cli):
    models = write_models(T=2)
    pt = models.pretrained_path.with_suffix(".pt")
    torch.save(models.pretrained, pt)
    err = refused(cli, out_dir, "--pretrained", pt, "--finetuned", *models.finetuned_paths, "--method", "tsvm", "--stream")
    assert "--stream" in err and str(pt) in err


@pytest.mark.parametrize("given", [["--param", "pact.K=4"], ["--param", "pact={K: 4}"]], ids=["dotted", "mapping"])
def test_conflicting_hyper_parameters(write_models, out_dir, cli, given):
    models = write_models(T=2)
    err = refused(cli, out_dir, *models.argv(), "--method", "pact+tsvm", *given, "--pact-K", "5")
    assert "'K'" in err and "--pact-K" in err


def test_out_may_not_overwrite_an_input(write_models, out_dir, cli):
    models = write_models(T=2)
    before = file_sha256(models.pretrained_path)
    rc, _, err = cli(*models.argv(), "--method", "tsvm", "--out", models.pretrained_path)
    assert rc == 2 and "--out" in err
    assert file_sha256(models.pretrained_path) == before


# -- parameter namespaces ---------------------------------------------------------------------------------


def test_bare_k_is_refused_naming_both_namespaces(write_models, out_dir, cli):
    models = write_models(T=2)
    err = refused(cli, out_dir, *models.argv(), "--method", "pact+ties", "--k", "4")
    assert "--k" in err and "--pact-k" in err and "--ties-k" in err


def test_bare_capital_k_is_refused_naming_the_pact_flag(write_models, out_dir, cli):
    models = write_models(T=2)
    err = refused(cli, out_dir, *models.argv(), "--method", "pact+tsvm", "--K", "4")
    assert "--K" in err and "--pact-K" in err


def test_a_flag_of_another_method_is_refused(write_models, out_dir, cli):
    models = write_models(T=2)
    err = refused(cli, out_dir, *models.argv(), "--method", "tsvm", "--ties-k", "30")
    assert "--ties-k" in err and "tsvm" in err


def test_pact_flags_for_a_method_without_pact(write_models, out_dir, cli):
    models = write_models(T=2)
    err = refused(cli, out_dir, *models.argv(), "--method", "tsvm", "--pact-K", "4")
    assert "pact+tsvm" in err


def test_pact_key_in_the_method_namespace_says_where_it_belongs(write_models, out_dir, cli):
    models = write_models(T=2)
    err = refused(cli, out_dir, *models.argv(), "--method", "pact+tsvm", "--param", "K=4")
    assert "'K'" in err and "pact" in err


def test_badly_typed_flag_names_the_flag(write_models, out_dir, cli):
    models = write_models(T=2)
    err = refused(cli, out_dir, *models.argv(), "--method", "pact+tsvm", "--pact-K", "many")
    assert "--pact-K" in err and "many" in err


@pytest.mark.parametrize("flag,value,name", [
    ("--seed", str(2**64), "seed"),
    ("--seed", "-1", "seed"),
    ("--power-iters", "1e8", "power_iters"),
    ("--oversample", "100000", "oversample"),
])
def test_out_of_range_svd_options_are_refused(write_models, out_dir, cli, flag, value, name):
    models = write_models(T=2)
    err = refused(cli, out_dir, *models.argv(), "--method", "pact+tsvm", "--svd", "randomized", flag, value)
    assert name in err


def test_unknown_device_is_refused_by_the_core_resolver(write_models, out_dir, cli):
    models = write_models(T=2)
    err = refused(cli, out_dir, *models.argv(), "--method", "tsvm", "--device", "tpu")
    assert "tpu" in err


# -- the destination ----------------------------------------------------------------------------------------


def poisoned(write_models):
    """Inputs that the merge itself would refuse: a destination error must come first (checked before merging)."""
    def poison(sd):
        sd[MATRIX_KEY][2, 5] = float("nan")

    return write_models(T=2, edit_task=poison)


def _refused_destination(cli, models, out) -> str:
    rc, stdout, stderr = cli(*models.argv(), "--method", "tsvm", "--out", out)
    assert rc == 2, (stdout, stderr)
    assert "error:" in stderr and "Traceback" not in stderr
    assert "NaN" not in stderr, "the destination must be checked before the merge runs"
    return stderr


def test_out_that_is_a_directory(write_models, out_dir, cli):
    models = poisoned(write_models)
    target = out_dir / "merged.safetensors"
    target.mkdir()
    err = _refused_destination(cli, models, target)
    assert str(target) in err and "directory" in err
    assert list(out_dir.iterdir()) == [target] and list(target.iterdir()) == []


def test_out_under_a_regular_file(write_models, out_dir, cli):
    models = poisoned(write_models)
    blocker = out_dir / "notes.txt"
    blocker.write_text("not a directory")
    err = _refused_destination(cli, models, blocker / "sub" / "merged.safetensors")
    assert str(blocker) in err and "not a directory" in err
    assert blocker.read_text() == "not a directory"


def test_out_in_an_unwritable_place(write_models, cli):
    models = poisoned(write_models)
    target = "/proc/pactmerge-merged.safetensors"  # unwritable for root too
    err = _refused_destination(cli, models, target)
    assert target in err and "cannot write" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_out_in_a_read_only_directory(write_models, out_dir, cli):
    models = poisoned(write_models)
    out_dir.chmod(0o500)
    try:
        err = _refused_destination(cli, models, out_dir / "merged.safetensors")
    finally:
        out_dir.chmod(0o700)
    assert str(out_dir) in err


def _first_output(write_models, out_dir, cli):
    models = write_models(T=2)
    out = out_dir / "merged.safetensors"
    rc, _, stderr = cli(*models.argv(), "--method", "task_arithmetic", "--alpha", "0.5", "--out", out)
    assert rc == 0, stderr
    return models, out, file_sha256(out), (out_dir / "merged.safetensors.json").read_bytes()


def test_sidecar_path_that_is_a_directory_keeps_the_previous_output(write_models, out_dir, cli):
    models, out, weights, _ = _first_output(write_models, out_dir, cli)
    sidecar = out_dir / "merged.safetensors.json"
    sidecar.unlink()
    sidecar.mkdir()
    rc, _, err = cli(*models.argv(), "--method", "task_arithmetic", "--alpha", "0.9", "--out", out)
    assert rc == 2 and str(sidecar) in err and "directory" in err
    assert file_sha256(out) == weights, "the finished output was changed"
    assert sorted(p.name for p in out_dir.iterdir()) == ["merged.safetensors", "merged.safetensors.json"]


def test_a_failed_write_keeps_the_previous_output_and_sidecar(write_models, out_dir, cli, monkeypatch):
    """The disk fills up half way through the new weights: the old weights and sidecar stay, no temporary file."""
    import safetensors.torch

    models, out, weights, sidecar = _first_output(write_models, out_dir, cli)
    real_save = safetensors.torch.save_file

    def save_then_fail(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as fh:
            fh.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", save_then_fail)
    rc, _, err = cli(*models.argv(), "--method", "task_arithmetic", "--alpha", "0.9", "--out", out)
    assert rc == 2 and str(out) in err and "No space left" in err
    assert file_sha256(out) == weights
    assert (out_dir / "merged.safetensors.json").read_bytes() == sidecar
    assert sorted(p.name for p in out_dir.iterdir()) == ["merged.safetensors", "merged.safetensors.json"]
