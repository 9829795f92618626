"""The code paths a GPU run takes, run on the CPU wherever PyTorch allows it.

A GPU run of pactmerge uses bf16 autocast inside Lightning, ``torch.compile`` of the encoder
inside Lightning, the batched ``roi_align`` crop of ``TensorAugment`` and bf16 evaluation of
merged encoders. None of these is the CPU default, so without these tests they would first
execute on a GPU machine. Each test runs the real component (a real ``Trainer``, the real
augmentation, the real evaluation loop) on the CPU, with the tiny open_clip ViT.
"""

from __future__ import annotations

import shutil

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from tiny import ArrayTaskDataModule, accuracy, task_info

from pactmerge.pipeline.finetuner import Recipe
from pactmerge.pipeline.heads import build_heads, head_logits
from pactmerge.pipeline.training import fit_individual, read_summary

CPU = {"accelerator": "cpu", "devices": 1, "logger": False}


def _recipe(**kw) -> Recipe:
    base = dict(lr=1e-3, weight_decay=0.0, warmup_steps=1, max_steps=3, batch_size=16, ckpt_every_n_steps=3,
                log_every_n_steps=1, compile=False)
    return Recipe(**{**base, **kw})


def _dm() -> ArrayTaskDataModule:
    return ArrayTaskDataModule("digits", batch_size=16, eval_batch_size=32, n_train=64, n_val=32)


class _Grab(pl.Callback):
    """Keeps the LightningModule of the fit, and the dtype of one inner activation per training step."""

    def __init__(self) -> None:
        self.module = None
        self.dtypes: list[torch.dtype] = []
        self._handle = None

    def on_fit_start(self, trainer, pl_module):
        self.module = pl_module
        fc = pl_module.encoder.transformer.resblocks[0].mlp.c_fc
        self._handle = fc.register_forward_hook(lambda mod, args, out: self.dtypes.append(out.dtype))

    def on_fit_end(self, trainer, pl_module):
        self._handle.remove()


def test_bf16_mixed_training_on_cpu(tmp_path, tiny_loaded):
    """``precision="bf16-mixed"`` through the real Trainer: the forward runs in bf16, the weights
    stay float32 and finite, the loss and the final validation metrics are finite."""
    heads = build_heads(tiny_loaded, [task_info("digits")])
    grab = _Grab()
    init = tiny_loaded.encoder_state()
    state = fit_individual(tiny_loaded, heads, _dm(), _recipe(precision="bf16-mixed"), ckpt_dir=tmp_path,
                           trainer_kwargs=CPU, callbacks=[grab])
    assert grab.dtypes and set(grab.dtypes) == {torch.bfloat16}  # every training forward under autocast
    assert grab.module.trainer.precision == "bf16-mixed"
    assert set(state) == set(init)
    for k, v in state.items():
        assert v.dtype == init[k].dtype and torch.isfinite(v).all(), k
    assert any(not torch.equal(state[k], init[k]) for k in state)  # it trained
    metrics = read_summary(tmp_path)["metrics"]
    assert metrics["val/loss"] == metrics["val/loss"]  # not NaN
    # the logged accuracy is a share of the 32 validation images, close to the trained weights'
    # float32 accuracy (bf16 moves a prediction or two)
    dm = _dm()
    enc = tiny_loaded.encoder
    enc.load_state_dict(state)
    fp32 = accuracy(enc, heads["digits"], dm.xv, dm.yv)
    assert metrics["digits/acc"] * 32 == pytest.approx(round(metrics["digits/acc"] * 32), abs=1e-4)
    assert abs(metrics["digits/acc"] - fp32) <= 2 / 32, (metrics["digits/acc"], fp32)


def test_bf16_autocast_features_track_fp32(tiny_loaded):
    """The encoder under CPU bf16 autocast: bf16 features, close to the float32 ones (bf16 has 8 bits
    of mantissa, about 3 decimal digits)."""
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    enc = tiny_loaded.encoder.eval()
    with torch.no_grad():
        ref = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = enc(x)
    assert low.dtype == torch.bfloat16 and ref.dtype == torch.float32
    cos = F.cosine_similarity(low.float(), ref, dim=-1)
    assert cos.min() > 0.99, cos


@pytest.mark.slow
def test_torch_compile_inside_lightning_on_cpu(tmp_path, tiny_loaded):
    """``recipe.compile=True`` compiles the encoder in ``configure_model`` (inductor, C++ on the CPU):
    training runs compiled, the state-dict keys keep their names (no ``_orig_mod.``) in the returned
    state and in Lightning's checkpoint, and the compiled encoder computes what the eager one does.
    Only the training graph is compiled (no validation, the comparison reuses the training batch
    shape and grad mode): inductor's C++ builds dominate the test's time."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile's CPU backend (inductor) needs a C++ compiler; none on PATH")
    heads = build_heads(tiny_loaded, [task_info("digits")])
    grab = _Grab()
    state = fit_individual(tiny_loaded, heads, _dm(), _recipe(compile=True, max_steps=2, ckpt_every_n_steps=2,
                                                            final_validation=False),
                           ckpt_dir=tmp_path, trainer_kwargs=CPU, callbacks=[grab])
    module = grab.module
    assert module._compiled and module.encoder._compiled_call_impl is not None
    assert set(state) == set(tiny_loaded.encoder_state())
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    enc_keys = {k.removeprefix("encoder.") for k in ckpt["state_dict"] if k.startswith("encoder.")}
    assert enc_keys == set(state) and not any("_orig_mod" in k for k in ckpt["state_dict"])

    import copy

    eager = copy.deepcopy(tiny_loaded.encoder).train()
    eager.load_state_dict(state)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # the training batch shape
    torch.testing.assert_close(module.encoder(x).detach(), eager(x).detach(), atol=1e-4, rtol=1e-4)


# -- the batched roi_align crop (the augmentation of a GPU run) -------------------------------
def _smooth_images(n: int, size: int) -> torch.Tensor:
    """uint8 (n, 3, size, size): real digits upsampled, so interpolation differences stay small."""
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().images[:n] / 16.0, dtype=torch.float32)[:, None]
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size)
    rgb = torch.cat([x, 0.5 * x + 0.5 * ramp, 1 - x], 1)  # three different channels
    return (rgb * 255).round().to(torch.uint8).contiguous()


def _augment(size: int = 32):
    from pactmerge.datamodules.transforms import TensorAugment

    return TensorAugment(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), augment=True, hflip=True)


def test_roi_align_crop_identity_and_flip_exact_on_cpu():
    """A box covering the whole image at the output size samples every pixel centre exactly:
    the batched path equals plain normalisation, flipped where the box says so."""
    aug = _augment(32)
    images = _smooth_images(4, 32)
    boxes = torch.tensor([[0, 0, 32, 32, 0], [0, 0, 32, 32, 1], [0, 0, 32, 32, 0], [0, 0, 32, 32, 1]])
    out = aug._crop_batched(images, boxes)
    ref = aug.normalise(images).contiguous()
    ref[1::2] = ref[1::2].flip(-1)
    assert out.dtype == torch.float32 and out.shape == (4, 3, 32, 32) and out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_roi_align_crop_matches_the_per_sample_cpu_path():
    """Random boxes from ``sample_crops`` (the distribution both paths share): the batched
    ``roi_align`` crop agrees with the per-sample uint8 path of the CPU. Upscaled crops sample the
    same points (bilinear at pixel centres), so they differ by the CPU path's uint8 rounding and at
    the crop border; downscaled ones use different low-pass filters (roi_align averages samples,
    the CPU path an antialiased bilinear), so they agree on average."""
    from pactmerge.datamodules.transforms import sample_crops

    aug = _augment(32)
    gen = torch.Generator().manual_seed(0)
    up_images = _smooth_images(16, 48)
    up = sample_crops(16, 48, 48, (0.1, 0.4), (3 / 4, 4 / 3), True, gen)  # crops of 15..30 px -> 32
    assert (up[:, 2:4] <= 32).all() and up[:, 4].any() and not up[:, 4].all()
    a, b = aug._crop_batched(up_images, up), aug.crop_normalise(up_images, up).contiguous()
    interior = (a - b)[..., 2:-2, 2:-2].abs()
    assert interior.max() < 0.02, interior.max()  # one grey level: 1 / 255 / std = 0.017
    assert (a - b).abs().mean() < 0.01

    down_images = _smooth_images(16, 96)
    down = sample_crops(16, 96, 96, (0.5, 1.0), (3 / 4, 4 / 3), True, gen)  # crops of 56..96 px -> 32
    a, b = aug._crop_batched(down_images, down), aug.crop_normalise(down_images, down).contiguous()
    assert a.shape == b.shape == (16, 3, 32, 32)
    assert (a - b).abs().mean() < 0.02, (a - b).abs().mean()  # of values with std 1.5
    # per image the two paths see the same content: far closer to each other than to other images
    dist = torch.cdist(a.flatten(1), b.flatten(1))
    assert torch.equal(dist.argmin(1), torch.arange(16))


# -- bf16 evaluation of a merged encoder ---------------------------------------------------------
def test_bf16_evaluation_of_a_merged_encoder_on_cpu(tiny_loaded):
    """A TSV-M merge of two fine-tunes, evaluated by ``evaluate_encoder`` on real offline digits
    (the tensor data path: uint8 batches finished by ``gpu_transform``) with its forward under
    bf16 autocast, as on a GPU: the accuracies of the predictions recomputed here, and the
    predictions of the float32 evaluation on nearly every image."""
    from pactmerge.datamodules import DataConfig, TaskDataModule, get_task
    from pactmerge.merging import merge
    from pactmerge.pipeline.evaluate import evaluate_encoder

    pre = tiny_loaded.encoder_state()
    fts = []
    for seed in (1, 2):
        gen = torch.Generator().manual_seed(seed)
        fts.append({k: v + 0.02 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                    for k, v in pre.items()})
    merged = merge(pre, fts, "tsvm", device="cpu").apply(pre, 1.0)
    cfg = DataConfig(batch_size=16, eval_batch_size=64, num_workers=0, image_size=32, mean=(0.5,) * 3,
                     std=(0.5,) * 3, max_train=64, max_eval=128, seed=0)
    dm = TaskDataModule("digits", cfg)
    dm.prepare_data()
    dm.setup("test")
    heads = build_heads(tiny_loaded, [get_task("digits")])
    enc = tiny_loaded.encoder
    fp32 = evaluate_encoder(enc, merged, heads, {"digits": dm}, split="test", logit_scale=100.0, device="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = evaluate_encoder(enc, merged, heads, {"digits": dm}, split="test", logit_scale=100.0, device="cpu")
    assert abs(fp32["digits"] - bf16["digits"]) <= 0.05

    # the same predictions, image by image
    enc.load_state_dict(merged)
    enc.eval()
    agree = total = correct = correct_low = 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            x = dm.gpu_transform(batch, train=False)["images"]
            ref = head_logits(enc(x), heads["digits"], 100.0).argmax(-1)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                feats = enc(x)
            assert feats.dtype == torch.bfloat16
            low = head_logits(feats.float(), heads["digits"], 100.0).argmax(-1)
            agree += int((ref == low).sum())
            correct += int((ref == batch["labels"]).sum())
            correct_low += int((low == batch["labels"]).sum())
            total += len(ref)
    assert total == 128 and agree / total >= 0.9, agree / total
    # evaluate_encoder's accuracies are these predictions' accuracies, the float32 one exactly
    assert fp32["digits"] == pytest.approx(correct / total)
    assert abs(bf16["digits"] - correct_low / total) <= 0.05
