"""Images per second delivered to the training loop: pre-decoded uint8 cache vs PIL decoding.

Generates a JPEG ImageFolder dataset (default 2000 images, 224x224) in a temporary directory and
iterates training epochs of ``TaskDataModule.train_dataloader()`` followed by ``gpu_transform``
(on CUDA when available) — what ``on_after_batch_transfer`` does under a trainer — for

- uncached: PIL decode + torchvision transforms (RandomResizedCrop, flip, ToTensor, Normalize) in the
  loader workers (the PIL path);
- cached: uint8 memmap rows + tensor-side random resized crop, flip and normalisation, arranged as a
  trainer on this device arranges them: on the CPU the loader workers finish the batches, on CUDA
  ``gpu_transform`` finishes them on the GPU;
- for reference, cached with the other arrangement, and the cached loader alone (uint8 rows, no
  augmentation).

Every path uses the same number of loader workers (one torch thread each, PyTorch's worker
default) and the same torch thread count in the training-loop process; epochs alternate between
paths so that a change in machine load hits all alike, and each path's best epoch is reported.
Prints a table; the last line is one JSON object.

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


def make_jpeg_dataset(root: Path, n: int, size: int, classes: int = 10, seed: int = 0, n_test: int | None = None) -> None:
    """A train/ (n images) and test/ (``n_test`` images, default one per class) ImageFolder tree of
    textured JPEGs (quality 90)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for split, count in (("train", n), ("test", classes if n_test is None else max(n_test, classes))):
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
    from pactmerge.datamodules.module import loader_finishes

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
    load_before = os.getloadavg()

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
        cached_cfg = DataConfig(**common, cache_dir=str(Path(tmp) / "cache"))
        # the arrangement a trainer on this device picks: loader workers finish the batches only on
        # the CPU and only when they have cores of their own; otherwise gpu_transform finishes them
        in_loader = loader_finishes(device.type, args.num_workers)
        cached = TaskDataModule(task, cached_cfg, finish_in_loader=in_loader)
        t0 = time.perf_counter()
        cached.prepare_data()
        cached.setup()
        build_s = time.perf_counter() - t0
        other = TaskDataModule(task, cached_cfg, finish_in_loader=not in_loader)
        other.setup()
        uncached = TaskDataModule(task, DataConfig(**common), train_transform=pil_tf, eval_transform=eval_tf)
        uncached.setup()

        where, other_where = ("loader workers", f"gpu_transform on {device.type}")[:: 1 if in_loader else -1]
        runs = {  # name: (module, apply gpu_transform)
            "uncached (PIL + torchvision in workers)": (uncached, True),
            f"cached, finished by {where}": (cached, True),
            f"cached, finished by {other_where} (other arrangement)": (other, True),
            "cached loader alone (uint8 rows, no augmentation)": (other if in_loader else cached, False),
        }
        rates = {name: 0.0 for name in runs}
        for _ in range(args.epochs):
            for name, (dm, transform) in runs.items():
                seconds, images = run_epoch(dm, device, transform)
                rates[name] = max(rates[name], images / seconds)
    load_after = os.getloadavg()

    names = list(rates)
    u, c, c_other, loader_only = (rates[n] for n in names)
    print(f"data throughput: {args.num_images} JPEGs {S}x{S}, batch {args.batch_size}, device {device.type}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, python {platform.python_version()}")
    print(f"  every path: {args.num_workers} loader worker(s) x 1 torch thread, {args.threads} torch thread(s) in the "
          f"training loop; best of {args.epochs} alternating epochs")
    print(f"  load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    print(f"  generated dataset in {gen_s:.1f} s; cache build (decode + resize once) {build_s:.1f} s")
    print(f"  {'path':<58}{'images/s':>10}")
    for name in names:
        print(f"  {name:<58}{rates[name]:>10.0f}")
    print(f"  speed-up cached / uncached: {c / u:.1f}x (target >= 5x)")
    print(json.dumps({
        "benchmark": "data_throughput", "num_images": args.num_images, "image_size": S, "batch_size": args.batch_size,
        "num_workers": args.num_workers, "worker_threads": 1, "main_threads": args.threads, "device": device.type,
        "cpus": os.cpu_count(), "cached_finished_in": where,
        "uncached_images_per_s": round(u, 1), "cached_images_per_s": round(c, 1),
        "cached_other_arrangement_images_per_s": round(c_other, 1),
        "cached_loader_only_images_per_s": round(loader_only, 1), "speedup": round(c / u, 2),
        "target_met": c / u >= 5.0, "cache_build_s": round(build_s, 2),
        "loadavg_before": round(load_before[0], 2), "loadavg_after": round(load_after[0], 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
