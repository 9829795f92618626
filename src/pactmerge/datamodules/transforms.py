"""Image geometry on the CPU side (decode + resize once) and tensor-side augmentation + normalisation.

The tensor path stores/delivers uint8 images (B, 3, S, S) already resized (shorter side to S, centre
crop, as CLIP preprocessing does); :class:`TensorAugment` turns them into normalised float32 on
whatever device they are on: a per-sample random resized crop (area in ``scale``, log-uniform
aspect in ``ratio``, bilinear), an optional horizontal flip, and ``(x / 255 - mean) / std``.

CPU: one pass per sample (uint8 crop + resize with PyTorch's vectorised uint8 kernel, flip, then
normalise into the sample's slot of the output), so every intermediate stays in cache. Other
devices: one batched ``roi_align`` over all crop boxes. Both draw their boxes from
:func:`sample_crops`, so the augmentation has the same distribution wherever it runs.
"""

from __future__ import annotations

import ctypes
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import get_worker_info

_HUGE = 1 << 21  # 2 MiB: a transparent huge page
_MADV_HUGEPAGE = 14


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """PIL image (any mode) -> uint8 array (size, size, 3) (HWC): shorter side to ``size`` (bicubic), centre crop."""
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
    arr = np.array(img, dtype=np.uint8)  # a writable copy (PIL's array view is read-only)
    if arr.ndim == 2:  # grayscale -> 3 identical channels
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def hwc_to_chw(images: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) -> (..., 3, H, W) view (channels-last strides, no copy)."""
    return images.movedim(-1, -3)


def new_host_tensor(shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool = False,
                    shared: bool | None = None) -> torch.Tensor:
    """An uninitialised CPU tensor for a batch; in shared memory inside a DataLoader worker (``shared=None``).

    A worker's batch crosses to the main process through shared memory; allocating it there
    directly saves a copy of the whole batch (what ``default_collate`` does too). In the main
    process large buffers are advised onto transparent huge pages: first-touch page faults on
    4 KiB pages otherwise cost about as much as normalising the batch.
    """
    if channels_last:
        b, c, h, w = shape
        return hwc_to_chw(new_host_tensor((b, h, w, c), dtype, shared=shared))
    numel = math.prod(shape)
    if shared or (shared is None and get_worker_info() is not None):
        storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
        return torch.empty(0, dtype=dtype).set_(storage).view(shape)
    out = torch.empty(shape, dtype=dtype)
    if out.nbytes >= 4 * _HUGE and sys.platform.startswith("linux"):
        _advise_huge(out)
    return out


def _advise_huge(t: torch.Tensor) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        start = (t.data_ptr() + _HUGE - 1) & ~(_HUGE - 1)
        end = (t.data_ptr() + t.nbytes) & ~(_HUGE - 1)
        if end > start:
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_HUGEPAGE)
    except (OSError, AttributeError):  # advice only: without it the buffer is merely slower to fill
        pass


def _is_channels_last(image: torch.Tensor) -> bool:
    """(3, H, W) with channel stride 1: an HWC row, perhaps a crop of one."""
    return image.stride(0) == 1 and image.shape[0] > 1


def sample_crops(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                 hflip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random resized crop boxes: int64 (n, 5) rows ``(top, left, crop_h, crop_w, flip)``.

    Area uniform in ``scale`` times ``height * width``, aspect (w / h) log-uniform in ``ratio``, sides
    rounded and clamped to the image, position uniform over the valid offsets; ``flip`` is 1 with
    probability 1/2 when ``hflip``, else 0.
    """
    area = torch.empty(n, dtype=torch.float64).uniform_(*scale, generator=generator) * (height * width)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(*log_ratio, generator=generator))
    cw = torch.sqrt(area * aspect).round().clamp(1, width).long()
    ch = torch.sqrt(area / aspect).round().clamp(1, height).long()
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = (u[:, 0] * (height - ch + 1)).long().clamp(max=height - ch)
    left = (u[:, 1] * (width - cw + 1)).long().clamp(max=width - cw)
    flip = (torch.rand(n, generator=generator) < 0.5).long() if hflip else torch.zeros(n, dtype=torch.long)
    return torch.stack([top, left, ch, cw, flip], dim=1)


class TensorAugment:
    """uint8 (B, 3, H, W) -> float32 (B, 3, S, S), normalised; random resized crop (+ flip) when training.

    On the CPU the output has the memory format of the input (channels-last for cache rows, which
    saves a transpose per image; contiguous for contiguous input); on other devices it is
    contiguous. A float input is returned unchanged: it has been finished already (PIL path, in a loader
    worker, or by an earlier call). Picklable, so DataLoader workers can run it.
    """

    def __init__(self, image_size: int, mean, std, *, augment: bool, hflip: bool,
                 scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.image_size, self.augment, self.hflip = image_size, augment, hflip
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        std64 = torch.tensor(std, dtype=torch.float64)
        # (x / 255 - mean) / std == x * mul + add: one multiply-add per pixel
        self.mul = (1.0 / (255.0 * std64)).float().view(3, 1, 1)
        self.add = (-torch.tensor(mean, dtype=torch.float64) / std64).float().view(3, 1, 1)
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # width -> (mul, add) per HWC row

    def __getstate__(self):
        return {**self.__dict__, "_rows": {}}

    def __call__(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        if images.is_floating_point():
            return images
        b, _, h, w = images.shape
        if train and self.augment:
            gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
            boxes = sample_crops(b, h, w, self.scale, self.ratio, self.hflip, gen)
            return self.crop_normalise(images, boxes)
        size = self.image_size
        if (h, w) != (size, size):
            images = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=True)
            return self._normalise_float(images)
        return self.normalise(images)

    # ------------------------------------------------------------------------------------ parts
    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float32 ``(x / 255 - mean) / std`` (memory format: see the class docstring)."""
        if images.device.type != "cpu":
            return self._normalise_float(images.float())
        out = new_host_tensor(tuple(images.shape), torch.float32, channels_last=_is_channels_last(images[0]))
        for i in range(images.shape[0]):  # per sample: the float slot is still in cache for the multiply-add
            self._normalise_into(out[i], images[i])
        return out

    def crop_normalise(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Crop ``boxes`` (from :func:`sample_crops`) out of uint8 ``images``, resize to S x S, flip, normalise."""
        if images.device.type != "cpu":
            return self._crop_batched(images, boxes)
        size, b = self.image_size, images.shape[0]
        out = new_host_tensor((b, 3, size, size), torch.float32, channels_last=_is_channels_last(images[0]))
        for i, (top, left, ch, cw, flip) in enumerate(boxes.tolist()):
            crop = images[i: i + 1, :, top: top + ch, left: left + cw]
            if (ch, cw) != (size, size):
                # uint8 in, uint8 out: PyTorch's vectorised uint8 resize, fastest with channels-last rows
                crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                     antialias=ch > size or cw > size)
            crop = crop[0].flip(-1) if flip else crop[0]
            self._normalise_into(out[i], crop)
        return out

    def _normalise_into(self, out: torch.Tensor, image: torch.Tensor) -> None:
        """``out`` (3, H, W) float32, contiguous or channels-last, = normalised uint8 ``image`` (3, H, W)."""
        out.copy_(image)  # uint8 -> float32, fast when both have the same memory format
        if out.is_contiguous():
            out.mul_(self.mul).add_(self.add)
            return
        # channels-last: multiply-add whole HWC rows by a per-column pattern, so the inner loop is
        # a long contiguous run (a (3, 1, 1) broadcast would make it 3 elements long)
        w = out.shape[-1]
        if w not in self._rows:
            self._rows[w] = (self.mul.view(1, 3).repeat(w, 1).view(-1), self.add.view(1, 3).repeat(w, 1).view(-1))
        mul, add = self._rows[w]
        rows = out.movedim(0, -1).view(out.shape[1], w * 3)
        rows.mul_(mul).add_(add)

    def _normalise_float(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32, memory_format=torch.contiguous_format)
        return x.mul_(self.mul.to(x.device)).add_(self.add.to(x.device))

    def _crop_batched(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """All crops in one ``roi_align`` call (bilinear at bin centres; averages when shrinking)."""
        from torchvision.ops import roi_align

        size = self.image_size
        x = images.float()
        boxes = boxes.to(x.device)
        top, left, ch, cw, flip = boxes.unbind(1)
        rois = torch.stack([torch.arange(len(boxes), device=x.device), left, top, left + cw, top + ch], 1).to(x.dtype)
        out = roi_align(x, rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
        out = torch.where(flip.bool().view(-1, 1, 1, 1), out.flip(-1), out)
        return self._normalise_float(out)
