import pytest
import torch

from pactmerge.datamodules import DataConfig, TaskDataModule
from pactmerge.datamodules.transforms import TensorAugment

from dm_helpers import toy_task

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def batch(b=6, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, generator=g)


def reference_normalise(x):
    return (x.double() / 255 - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)


def test_eval_is_exact_normalisation():
    x = batch()
    out = TensorAugment(16, MEAN, STD, augment=True, hflip=True)(x, train=False)
    assert out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), reference_normalise(x), rtol=0, atol=1e-5)


def test_full_crop_without_flip_is_identity_geometry():
    x = batch()
    aug = TensorAugment(16, MEAN, STD, augment=True, hflip=False, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(aug(x, train=True).double(), reference_normalise(x), rtol=0, atol=1e-5)


def test_flip_only_mirrors_when_allowed():
    torch.manual_seed(0)
    x = batch(b=32)
    aug = TensorAugment(16, MEAN, STD, augment=True, hflip=True, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    out, ref = aug(x, train=True).double(), reference_normalise(x)
    same = [torch.allclose(o, r, atol=1e-5) for o, r in zip(out, ref)]
    mirrored = [torch.allclose(o, r.flip(-1), atol=1e-5) for o, r in zip(out, ref)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and any(same)


def test_random_resized_crop_changes_train_batches_and_keeps_range():
    torch.manual_seed(0)
    x = batch(b=8, s=32)
    aug = TensorAugment(24, MEAN, STD, augment=True, hflip=False)
    out = aug(x, train=True)
    assert out.shape == (8, 3, 24, 24) and torch.isfinite(out).all()
    lo, hi = reference_normalise(torch.zeros(1, 3, 1, 1)), reference_normalise(torch.full((1, 3, 1, 1), 255))
    assert (out.double() >= lo - 1e-5).all() and (out.double() <= hi + 1e-5).all()
    assert not torch.allclose(out, aug(x, train=True))


def test_float_input_passes_through():
    x = torch.randn(2, 3, 8, 8)
    assert TensorAugment(8, MEAN, STD, augment=True, hflip=True)(x, train=True) is x


def test_train_augment_off_means_eval_geometry(imagefolder):
    dm = TaskDataModule(toy_task(str(imagefolder)), DataConfig(image_size=20, num_workers=0, train_augment=False))
    x = batch(s=20)
    out = dm.gpu_transform({"images": x, "labels": torch.zeros(6, dtype=torch.long), "task": "toy"}, train=True)
    torch.testing.assert_close(out["images"].double(), reference_normalise(x), rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_gpu_transform_runs_on_cuda():
    x = batch(b=4, s=32).cuda()
    out = TensorAugment(24, MEAN, STD, augment=True, hflip=True)(x, train=True)
    assert out.is_cuda and out.shape == (4, 3, 24, 24)
