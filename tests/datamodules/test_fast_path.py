"""The fast input path: crop-box sampling, exact normalisation, CPU vs batched crops, finishing in the loader."""

import json
import math

import numpy as np
import pytest
import torch

from dm_helpers import toy_task
from pactmerge.datamodules import DataConfig, TaskDataModule
from pactmerge.datamodules.image_datasets import FinishBatch, TaskCollate
from pactmerge.datamodules.module import loader_finishes
from pactmerge.datamodules.transforms import TensorAugment, hwc_to_chw, sample_crops

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
LEVEL = 1 / 255 / min(STD)  # one uint8 step after normalisation


def ref(x):
    m, s = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (MEAN, STD))
    return (x.double() / 255 - m) / s


def hwc_batch(b, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    return hwc_to_chw(torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8, generator=g))


def test_crop_boxes_respect_scale_ratio_bounds_and_flip_rate():
    h, w, n = 60, 60, 4000  # no crop needs clamping to the image at these scales
    boxes = sample_crops(n, h, w, (0.3, 0.5), (3 / 4, 4 / 3), hflip=True, generator=torch.Generator().manual_seed(0))
    top, left, ch, cw, flip = boxes.T.double()
    assert boxes.dtype == torch.long and boxes.shape == (n, 5)
    assert (top >= 0).all() and (left >= 0).all() and (top + ch <= h).all() and (left + cw <= w).all()
    area = ch * cw / (h * w)
    assert area.min() >= 0.3 * 0.95 and area.max() <= 0.5 * 1.05  # rounding of the sides
    aspect = cw / ch
    assert aspect.min() >= 0.75 * 0.9 and aspect.max() <= 4 / 3 * 1.1
    assert abs(area.mean().item() - 0.4) < 0.01  # area uniform in the scale range
    assert (area < 0.35).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert abs(torch.log(aspect).mean().item()) < 0.02  # log-uniform aspect is centred on 1
    assert abs(flip.mean().item() - 0.5) < 0.03
    # positions cover the valid offsets: both extremes occur for a small crop
    assert top.min() == 0 and left.min() == 0 and (top + ch).max() == h and (left + cw).max() == w
    no_flip = sample_crops(100, h, w, (0.3, 0.5), (0.75, 4 / 3), hflip=False)
    clamped = sample_crops(500, 20, 40, (1.0, 1.0), (0.75, 4 / 3), hflip=False)  # sides clamped to the image
    assert (clamped[:, 2] <= 20).all() and (clamped[:, 3] <= 40).all() and (clamped[:, :2] >= 0).all()
    assert (no_flip[:, 4] == 0).all()


def test_crop_boxes_are_reproducible_for_a_generator():
    a = sample_crops(16, 32, 32, (0.5, 1.0), (0.75, 4 / 3), True, torch.Generator().manual_seed(3))
    b = sample_crops(16, 32, 32, (0.5, 1.0), (0.75, 4 / 3), True, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalisation_hand_case(channels_last):
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[0] = 255
    x[1, :, :, 1] = 128
    if channels_last:
        x = hwc_to_chw(x.movedim(1, -1).contiguous())
    out = TensorAugment(4, MEAN, STD, augment=True, hflip=True)(x, train=False)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last) == channels_last
    for c in range(3):
        assert out[0, c, 2, 2].item() == pytest.approx((1 - MEAN[c]) / STD[c], abs=1e-5)
        assert out[1, c, 0, 1].item() == pytest.approx((128 / 255 - MEAN[c]) / STD[c], abs=1e-5)
        assert out[1, c, 3, 3].item() == pytest.approx(-MEAN[c] / STD[c], abs=1e-5)
    torch.testing.assert_close(out.double(), ref(x), rtol=0, atol=1e-5)


def test_unresized_crop_is_the_exact_slice_and_flip_mirrors():
    x = hwc_batch(2, 12)
    aug = TensorAugment(8, MEAN, STD, augment=True, hflip=True)
    boxes = torch.tensor([[1, 3, 8, 8, 0], [4, 2, 8, 8, 1]])
    out = aug.crop_normalise(x, boxes).double()
    torch.testing.assert_close(out[0], ref(x[:1, :, 1:9, 3:11])[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], ref(x[1:, :, 4:12, 2:10])[0].flip(-1), rtol=0, atol=1e-5)


def test_cpu_and_batched_crops_agree():
    """The per-sample uint8 CPU crop and the batched roi_align crop (the GPU path) give the same images."""
    x = hwc_batch(12, 32, seed=1)  # stored at the output size, as the cache is: crops only enlarge
    aug = TensorAugment(32, MEAN, STD, augment=True, hflip=True, scale=(0.3, 1.0))
    boxes = sample_crops(12, 32, 32, aug.scale, aug.ratio, True, torch.Generator().manual_seed(1))
    cpu = aug.crop_normalise(x, boxes)
    batched = aug._crop_batched(x, boxes)
    assert cpu.shape == batched.shape == (12, 3, 32, 32) and boxes[:, 4].any() and not boxes[:, 4].all()
    inner = (cpu - batched)[:, :, 1:-1, 1:-1].abs()  # the border rows may sample just outside the box
    assert inner.max() <= 1.01 * LEVEL  # uint8 rounding of the CPU resize
    assert (cpu - batched).abs().mean() < 2 * LEVEL  # a misplaced box would differ by ~0.5
    # shrinking crops (stored larger than the output) filter differently but agree on smooth images
    ramp = torch.arange(64, dtype=torch.float32)
    smooth = hwc_to_chw((ramp.view(1, -1, 1, 1) * 2 + ramp.view(1, 1, -1, 1) + torch.zeros(2, 64, 64, 3)).to(torch.uint8))
    shrink = torch.tensor([[0, 0, 64, 64, 0], [8, 4, 48, 56, 1]])
    diff = aug.crop_normalise(smooth, shrink) - aug._crop_batched(smooth, shrink)
    assert diff[:, :, 1:-1, 1:-1].abs().max() <= 2.01 * LEVEL


def test_finishing_in_the_loader_equals_gpu_transform(imagefolder, tmp_path):
    task = toy_task(str(imagefolder))
    cfg = DataConfig(image_size=16, num_workers=0, val_fraction=0.2, cache_dir=str(tmp_path / "c"))
    late = TaskDataModule(task, cfg, finish_in_loader=False)
    early = TaskDataModule(task, cfg, finish_in_loader=True)
    for dm in (late, early):
        dm.prepare_data()
        dm.setup()
    assert early.finishes_in_loader() and not late.finishes_in_loader()
    for a, b in zip(late.val_dataloader(), early.val_dataloader()):
        assert a["images"].dtype == torch.uint8 and b["images"].dtype == torch.float32
        finished = late.gpu_transform(a, train=False)["images"]
        torch.testing.assert_close(finished, b["images"], rtol=0, atol=0)
        torch.testing.assert_close(b["images"].double(), ref(a["images"]), rtol=0, atol=1e-5)
        assert early.gpu_transform(b, train=False)["images"] is b["images"]  # finished: passed through
        assert set(b) == {"images", "labels", "task"} and torch.equal(a["labels"], b["labels"])
    train = next(iter(early.train_dataloader()))["images"]
    assert train.dtype == torch.float32 and train.shape[1:] == (3, 16, 16)
    header = json.loads(next((tmp_path / "c" / "toy").glob("val-*.json")).read_text())
    assert header["layout"] == "N,H,W,3 uint8"


def test_finishing_in_a_worker_process(imagefolder, tmp_path):
    """A worker finishes batches into shared memory; the main process gets the same floats."""
    task = toy_task(str(imagefolder))
    cfg = DataConfig(image_size=16, num_workers=1, val_fraction=0.2, cache_dir=str(tmp_path / "c"))
    dm = TaskDataModule(task, cfg, finish_in_loader=True)
    dm.prepare_data()
    dm.setup()
    got = torch.cat([b["images"] for b in dm.val_dataloader()])
    rows = dm.datasets["val"]
    expected = ref(hwc_to_chw(torch.from_numpy(np.array(rows.images))))
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)


def test_collate_finishes_plain_samples_too():
    samples = [(hwc_to_chw(torch.full((4, 4, 3), 255, dtype=torch.uint8)), 1)] * 3
    aug = TensorAugment(4, MEAN, STD, augment=False, hflip=False)
    batch = TaskCollate("t", FinishBatch(aug, train=True))(samples)
    assert batch["task"] == "t" and batch["labels"].tolist() == [1, 1, 1]
    assert math.isclose(batch["images"][2, 1, 3, 3].item(), (1 - MEAN[1]) / STD[1], abs_tol=1e-5)


def test_loader_finishing_rule():
    assert loader_finishes("cpu", num_workers=2, cores=8)
    assert not loader_finishes("cpu", num_workers=1, cores=2)  # the worker shares the trainer's cores
    assert not loader_finishes("cpu", num_workers=0, cores=8)
    assert not loader_finishes("cuda", num_workers=4, cores=16)


def test_no_trainer_means_uint8_batches(imagefolder):
    dm = TaskDataModule(toy_task(str(imagefolder)), DataConfig(image_size=16, num_workers=0))
    assert not dm.finishes_in_loader()
    assert next(iter(dm.test_dataloader()))["images"].dtype == torch.uint8


@pytest.mark.gpu
def test_cuda_crops_match_cpu_crops():
    x = hwc_batch(8, 32, seed=2)
    aug = TensorAugment(24, MEAN, STD, augment=True, hflip=True)
    boxes = sample_crops(8, 32, 32, aug.scale, aug.ratio, True)
    gpu = aug.crop_normalise(x.cuda(), boxes).cpu()
    cpu = aug.crop_normalise(x, boxes)
    assert (gpu - cpu)[:, :, 1:-1, 1:-1].abs().max() <= 1.01 * LEVEL
    assert aug(x.cuda(), train=True).is_cuda
