"""Images per second delivered to the training loop: pre-decoded uint8 cache vs PIL decoding.

Generates a JPEG ImageFolder dataset (default 2000 images, 224x224) in a temporary directory and
iterates one training epoch of ``TaskDataModule.train_dataloader()`` followed by ``gpu_transform``
(on CUDA when available), for

- uncached: PIL decode + torchvision transforms (RandomResizedCrop, flip, ToTensor, Normalize) in the
  loader workers (the PIL path);
- cached: uint8 memmap rows + tensor-side random resized crop, flip and normalisation (the cached path),

with the same number of workers and batch size. Prints a table; the last line is one JSON object.

    python benchmarks/data_throughput.py [--num-images 2000] [--image-size 224] [--num-workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_jpeg_dataset(root: Path, n: int, size: int, classes: int = 10, seed: int = 0) -> None:
    """A train/ (n images) and test/ (one per class) ImageFolder tree of textured JPEGs (quality 90)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for split, count in (("train", n), ("test", classes)):
        for i in range(count):
            c = i % classes
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            f1, f2 = rng.uniform(2, 12, size=2)
            base = np.stack([np.sin(2 * np.pi * (f1 * xx + c / classes)), np.cos(2 * np.pi * f2 * yy), np.sin(9 * xx * yy)], -1)
            img = (127.5 + 80 * base + rng.normal(0, 20, size=(size, size, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:06d}.jpg", quality=90)


def run_epoch(dm, device: torch.device, transform: bool = True) -> tuple[float, int]:
    """Seconds and images for one training epoch, timed after the first batch (worker start-up excluded).

    ``transform=False`` stops after the loader (what the CPU side delivers before ``gpu_transform``).
    """
    loader = dm.train_dataloader()
    it = iter(loader)
    first = next(it)
    dm.gpu_transform({**first, "images": first["images"].to(device)}, train=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, count = time.perf_counter(), 0
    for batch in it:
        images = batch["images"].to(device, non_blocking=True)
        if transform:
            images = dm.gpu_transform({**batch, "images": images}, train=True)["images"]
        count += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, count


def main(argv: list[str] | None = None) -> int:
    from torchvision import transforms as T

    from pactmerge.datamodules import DataConfig, SourceSpec, TaskDataModule, TaskInfo
    from pactmerge.datamodules.config import CLIP_MEAN, CLIP_STD, default_num_workers

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=max(1, default_num_workers()))
    p.add_argument("--epochs", type=int, default=3, help="epochs per path, alternating paths; the best is reported")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the training-loop process")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    S = args.image_size

    with tempfile.TemporaryDirectory(prefix="pactmerge-bench-") as tmp:
        root = Path(tmp) / "jpegs"
        t0 = time.perf_counter()
        make_jpeg_dataset(root, args.num_images, S)
        gen_s = time.perf_counter() - t0
        task = TaskInfo("bench", "JPEG benchmark", [f"class{c}" for c in range(10)], ["a photo of a {}."],
                        (SourceSpec("imagefolder", str(root)),))
        common = dict(batch_size=args.batch_size, num_workers=args.num_workers, image_size=S, val_fraction=0.0)
        pil_tf = T.Compose([T.RandomResizedCrop(S, scale=(0.5, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                            T.Normalize(CLIP_MEAN, CLIP_STD)])
        eval_tf = T.Compose([T.Resize(S), T.CenterCrop(S), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
        uncached = TaskDataModule(task, DataConfig(**common), train_transform=pil_tf, eval_transform=eval_tf)
        cached = TaskDataModule(task, DataConfig(**common, cache_dir=str(Path(tmp) / "cache")))
        uncached.setup()
        t0 = time.perf_counter()
        cached.prepare_data()
        cached.setup()
        build_s = time.perf_counter() - t0

        # alternate the two paths so that a change in machine load hits both alike
        paths = {"uncached (PIL + torchvision)": uncached, "cached (uint8 memmap + tensor aug)": cached}
        rows = {name: 0.0 for name in paths}
        loader_only = 0.0
        for _ in range(args.epochs):
            for name, dm in paths.items():
                seconds, images = run_epoch(dm, device)
                rows[name] = max(rows[name], images / seconds)
            seconds, images = run_epoch(cached, device, transform=False)
            loader_only = max(loader_only, images / seconds)

    (u_name, u), (c_name, c) = rows.items()
    print(f"data throughput: {args.num_images} JPEGs {S}x{S}, batch {args.batch_size}, workers {args.num_workers}, "
          f"threads {args.threads}, device {device.type}, {os.cpu_count()} CPUs, torch {torch.__version__}, {platform.python_version()}")
    print(f"  generated dataset in {gen_s:.1f} s; cache build (decode + resize once) {build_s:.1f} s")
    print(f"  {'path':<50}{'images/s':>12}")
    print(f"  {u_name:<50}{u:>12.0f}")
    print(f"  {c_name:<50}{c:>12.0f}")
    print(f"  {'cached loader only (uint8, before gpu_transform)':<50}{loader_only:>12.0f}")
    print(f"  speed-up cached / uncached: {c / u:.1f}x (target >= 5x)")
    print(json.dumps({
        "benchmark": "data_throughput", "num_images": args.num_images, "image_size": S, "batch_size": args.batch_size,
        "num_workers": args.num_workers, "device": device.type, "cpus": os.cpu_count(),
        "uncached_images_per_s": round(u, 1), "cached_images_per_s": round(c, 1),
        "cached_loader_only_images_per_s": round(loader_only, 1), "speedup": round(c / u, 2),
        "cache_build_s": round(build_s, 2), "target_met": c / u >= 5.0,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
