"""Image geometry on the CPU side (decode + resize once) and tensor-side augmentation + normalisation.

The tensor path stores/delivers uint8 images (B, 3, S, S) already resized (shorter side to S, centre
crop, as CLIP preprocessing does); :class:`TensorAugment` then runs on whatever device the batch is
on: a per-sample random resized crop (integer box, bilinear resize; uint8 on the CPU), an optional
horizontal flip, and normalisation to float32.
"""

from __future__ import annotations

import math
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """PIL image (any mode) -> uint8 array (3, size, size): shorter side to ``size`` (bicubic), centre crop."""
    if img.format == "JPEG" and min(img.size) >= 2 * size:
        img.draft("RGB", (size, size))  # let libjpeg decode at a reduced scale: much faster, same result size
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:  # grayscale -> 3 identical channels
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class TensorAugment:
    """uint8 (B, 3, H, W) -> float32 (B, 3, S, S), normalised; random resized crop (+ flip) when training.

    A float input is returned unchanged: it has been transformed already (PIL path or a second call).
    """

    def __init__(self, image_size: int, mean, std, *, augment: bool, hflip: bool,
                 scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.image_size, self.augment, self.hflip = image_size, augment, hflip
        self.scale, self.log_ratio = scale, (math.log(ratio[0]), math.log(ratio[1]))
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        if images.is_floating_point():
            return images
        size = self.image_size
        x = images
        if train and self.augment:
            x = self._random_resized_crop(x)
        elif x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        # contiguous NCHW float: the broadcast normalisation is slow on channels-last tensors on the CPU
        x = x.to(torch.float32, memory_format=torch.contiguous_format)
        mean, std = self.mean.to(x.device) * 255.0, self.std.to(x.device) * 255.0
        return x.sub_(mean).div_(std)

    def _random_resized_crop(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample integer crop box (area in ``scale``, aspect in ``ratio``) resized to S x S, bilinear.

        uint8 stays uint8 on the CPU (PyTorch's vectorised uint8 resize is the fastest CPU path); on
        other devices the resize runs in float.
        """
        b, _, h, w = x.shape
        size = self.image_size
        if x.device.type != "cpu":
            x = x.float()
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        area = torch.empty(b).uniform_(*self.scale, generator=gen) * (h * w)
        ratio = torch.exp(torch.empty(b).uniform_(*self.log_ratio, generator=gen))
        cw = torch.sqrt(area * ratio).round().clamp(1, w).long().tolist()
        ch = torch.sqrt(area / ratio).round().clamp(1, h).long().tolist()
        u = torch.rand(b, 2, generator=gen).tolist()
        flip = (torch.rand(b, generator=gen) < 0.5).tolist() if self.hflip else [False] * b
        # channels-last rows and slice assignment keep PyTorch on its fast per-image resize kernels
        x = x.contiguous(memory_format=torch.channels_last)
        out = torch.empty((b, x.shape[1], size, size), dtype=x.dtype, device=x.device)
        out = out.contiguous(memory_format=torch.channels_last)
        for i in range(b):
            top, left = int(u[i][0] * (h - ch[i] + 1)), int(u[i][1] * (w - cw[i] + 1))
            crop = x[i: i + 1, :, top: top + ch[i], left: left + cw[i]]
            if crop.shape[-2:] != (size, size):
                crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
            out[i: i + 1] = crop
        flipped = [i for i in range(b) if flip[i]]
        if flipped:
            sel = torch.tensor(flipped, device=x.device)
            out[sel] = out[sel].flip(-1)
        return out
