"""Training throughput of ``CLIPFineTuner`` inside a Lightning Trainer (images/s and MFU).

Random-init open_clip image towers, frozen random orthonormal heads, AdamW + clipping as in the
standard recipe. Inputs: ``--data synthetic`` (default) feeds batches already on the device (the
step alone); ``--data cache`` runs the real data path: a generated JPEG ImageFolder, decoded once
into the pre-decoded uint8 cache, read by ``TaskDataModule``'s loader workers and augmented on
the device (``on_after_batch_transfer``), exactly as a fine-tuning stage does.

Variants (``--variants``): ``bf16-compile`` (bf16-mixed + torch.compile, the CUDA default),
``bf16`` (bf16-mixed, eager) and ``fp32`` (32-true; TF32 matmuls on CUDA, as the public recipe
ran). Defaults: on CUDA ViT-B-32 and ViT-B-16 (batch 128) and ViT-L-14 (batch 64) with all three
variants; without CUDA a tiny ViT in fp32. ``--plain`` adds the same step in a plain PyTorch loop.

MFU = images/s x training FLOPs per image / the device's peak: training FLOPs are 3x the forward
FLOPs that ``torch.utils.flop_counter`` counts for one image; peaks are the datasheet's dense
rates (H100/H200 SXM: 989 TFLOP/s bf16, 495 TF32; ``--peak-tflops`` to give one). Prints a table;
the last stdout line is one JSON object.

    python benchmarks/train_throughput.py [--models ViT-B-32 ...] [--batch-sizes 128 256] [--data cache]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from pactmerge.pipeline.finetuner import CLIPFineTuner, Recipe
from pactmerge.pipeline.heads import orthonormal_head

GPU_MODELS = {"ViT-B-32": 128, "ViT-B-16": 128, "ViT-L-14": 64}
VARIANTS = {"bf16-compile": ("bf16-mixed", True), "bf16": ("bf16-mixed", False), "fp32": ("32-true", False)}
# dense datasheet peaks, FLOP/s: (bf16, fp32 through TF32); matched against the device name
PEAKS = {"H200": (989e12, 495e12), "H100": (989e12, 495e12), "A100": (312e12, 156e12), "L40S": (362e12, 183e12)}
TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class _Timer(pl.Callback):
    """Wall time of the steps after ``warmup`` (CUDA synchronised at both ends)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self.start = self._now()

    def on_train_end(self, trainer, *args) -> None:
        self.end = self._now()


class _Synthetic:
    """``n`` identical batches of the pactmerge batch contract, already on ``device``."""

    def __init__(self, n: int, batch: int, size: int, classes: int, device: str) -> None:
        g = torch.Generator().manual_seed(0)
        self.batch = {"images": torch.randn(batch, 3, size, size, generator=g).to(device),
                      "labels": torch.randint(0, classes, (batch,), generator=g).to(device), "task": "synthetic"}
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return (self.batch for _ in range(self.n))


def _encoder(name: str):
    import open_clip

    if name == "tiny":
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "tiny_bench.json").write_text(json.dumps(TINY))
            open_clip.add_model_config(d)
            model = open_clip.create_model("tiny_bench")
    else:
        model = open_clip.create_model(name)
    size = model.visual.preprocess_cfg["size"]
    return model.visual, (size if isinstance(size, int) else size[0])


def forward_flops(encoder, size: int) -> float:
    """FLOPs of one image's forward pass through ``encoder`` (counted on the CPU in fp32)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        encoder(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def peak_flops(device: str, precision: str, override_tflops: float | None) -> float | None:
    """The device's dense peak FLOP/s for ``precision`` (None when unknown: MFU is then not given)."""
    if override_tflops:
        return override_tflops * 1e12
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for key, (bf16, tf32) in PEAKS.items():
        if key in name:
            return bf16 if precision.startswith("bf16") else tf32
    return None


class CacheData:
    """The fine-tuning data path over a generated JPEG ImageFolder: pre-decoded uint8 cache, loader
    workers, device-side augmentation (built once, shared by every measurement at one image size)."""

    def __init__(self, root: Path, num_images: int, size: int, source_size: int, num_workers: int | None) -> None:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from data_throughput import make_jpeg_dataset

        from pactmerge.datamodules import DataConfig, SourceSpec, TaskInfo
        from pactmerge.datamodules.config import default_num_workers

        t0 = time.perf_counter()
        make_jpeg_dataset(root / "jpegs", num_images, source_size, n_test=min(num_images, 1024))
        self.task = TaskInfo("bench", "JPEG benchmark", [f"class{c}" for c in range(10)], ["a photo of a {}."],
                             (SourceSpec("imagefolder", str(root / "jpegs")),))
        self.size, self.root = size, root
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.config = lambda batch: DataConfig(batch_size=batch, eval_batch_size=batch, num_workers=self.num_workers,
                                               image_size=size, val_fraction=0.0, cache_dir=str(root / "cache"))
        dm = self.module(32)
        dm.prepare_data()
        self.build_s = time.perf_counter() - t0

    def module(self, batch: int):
        from pactmerge.datamodules import TaskDataModule

        return TaskDataModule(self.task, self.config(batch))


def measure(name: str, batch: int, precision: str, compile_: bool, steps: int, warmup: int, device: str,
            data: "CacheData | None" = None, peak_tflops: float | None = None) -> dict:
    encoder, size = _encoder(name)
    dim = encoder(torch.zeros(1, 3, size, size)).shape[-1]
    flops = 3.0 * forward_flops(encoder, size)  # forward + backward (input and weight gradients)
    task = "bench" if data is not None else "synthetic"
    recipe = Recipe(max_steps=warmup + steps, warmup_steps=1, precision=precision, compile=compile_,
                    batch_size=batch)
    module = CLIPFineTuner(encoder, {task: orthonormal_head(task, 10, dim)}, 100.0, recipe)
    timer = _Timer(warmup)
    trainer = pl.Trainer(accelerator="cuda" if device == "cuda" else "cpu", devices=1, precision=precision,
                         max_steps=warmup + steps, gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                         limit_val_batches=0, num_sanity_val_steps=0)
    if data is None:
        trainer.fit(module, train_dataloaders=_Synthetic(warmup + steps, batch, size, 10, device))
    else:
        if data.size != size:
            raise SystemExit(f"--image-size {data.size} does not match {name}'s input size {size}")
        trainer.fit(module, datamodule=data.module(batch))
    elapsed = timer.end - timer.start
    rate = batch * steps / elapsed
    peak = peak_flops(device, precision, peak_tflops)
    return {"model": name, "batch": batch, "precision": precision, "compile": compile_, "steps": steps,
            "loop": "lightning", "data": "cache" if data is not None else "synthetic",
            "images_per_s": round(rate, 1), "step_ms": round(1000 * elapsed / steps, 2),
            "train_gflop_per_image": round(flops / 1e9, 3), "mfu": None if peak is None else round(rate * flops / peak, 4)}


def measure_plain(name: str, batch: int, precision: str, compile_: bool, steps: int, warmup: int,
                  device: str) -> dict:
    """The same training step without Lightning: autocast, AdamW, clipping, optional compile."""
    import torch.nn.functional as F

    from pactmerge.pipeline.heads import head_logits

    encoder, size = _encoder(name)
    encoder = encoder.to(device).train()
    head = orthonormal_head("synthetic", 10, encoder(torch.zeros(1, 3, size, size, device=device)).shape[-1])
    head = head.to(device)
    if compile_:
        encoder.compile()
    opt = torch.optim.AdamW(encoder.parameters(), lr=1e-5, weight_decay=0.1, fused=device == "cuda")
    data = _Synthetic(1, batch, size, 10, device).batch
    bf16 = precision.startswith("bf16")
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize() if device == "cuda" else None
            start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(head_logits(encoder(data["images"]), head, 100.0).float(), data["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize() if device == "cuda" else None
    elapsed = time.perf_counter() - start
    return {"model": name, "batch": batch, "precision": precision, "compile": compile_, "steps": steps,
            "loop": "plain", "data": "synthetic", "images_per_s": round(batch * steps / elapsed, 1),
            "step_ms": round(1000 * elapsed / steps, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", help="open_clip model names (default: ViT-B-32 ViT-B-16 ViT-L-14 on "
                   "CUDA, 'tiny' on CPU)")
    p.add_argument("--batch-sizes", nargs="+", type=int, help="per-step batch sizes, each measured (default: the "
                   "model's: 128, ViT-L-14 64; CPU 32)")
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)  # the older single-size spelling
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), help="default: every variant on CUDA, fp32 on CPU")
    p.add_argument("--no-compile", action="store_true", help="drop the bf16-compile variant")
    p.add_argument("--no-fp32", action="store_true", help="drop the fp32 variant")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10 on CUDA, 3 on CPU)")
    p.add_argument("--data", choices=["synthetic", "cache"], default="synthetic",
                   help="synthetic: batches already on the device; cache: the real data path (see the module doc)")
    p.add_argument("--num-images", type=int, default=4096, help="images of the generated data set (--data cache)")
    p.add_argument("--source-size", type=int, default=64, help="side of the generated JPEGs, upsampled into the cache")
    p.add_argument("--image-size", type=int, default=None, help="cache side (default: the first model's input size)")
    p.add_argument("--num-workers", type=int, default=None, help="loader workers (default: cores - 1, at most 8)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s for MFU (default: from the device name)")
    p.add_argument("--plain", action="store_true", help="also time a plain PyTorch loop (no Lightning)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    args = p.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 variant as the public recipe ran it
        torch.backends.cudnn.allow_tf32 = True
        models = args.models or list(GPU_MODELS)
        variants = args.variants or list(VARIANTS)
        warmup = 10 if args.warmup is None else args.warmup
    else:
        models = args.models or ["tiny"]
        variants = args.variants or ["fp32"]
        warmup = 3 if args.warmup is None else args.warmup
    variants = [v for v in variants if not (args.no_compile and v == "bf16-compile") and not (args.no_fp32 and v == "fp32")]
    sizes = args.batch_sizes or ([args.batch_size] if args.batch_size else None)
    data, build_s = None, None
    rows = []
    with tempfile.TemporaryDirectory(prefix="pactmerge-train-bench-") as tmp:
        if args.data == "cache":
            side = args.image_size or _encoder(models[0])[1]
            data = CacheData(Path(tmp), args.num_images, side, args.source_size, args.num_workers)
            build_s = round(data.build_s, 2)
        for name in models:
            for batch in sizes or [GPU_MODELS.get(name, 128) if device == "cuda" else 32]:
                for variant in variants:
                    precision, comp = VARIANTS[variant]
                    row = measure(name, batch, precision, comp, args.steps, warmup, device, data, args.peak_tflops)
                    rows.append({"variant": variant, **row})
                    if args.plain:
                        rows.append({"variant": variant, **measure_plain(name, batch, precision, comp, args.steps,
                                                                         warmup, device)})
                    torch.cuda.empty_cache() if device == "cuda" else None
    dev_name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"CLIPFineTuner training throughput on {dev_name}, torch {torch.__version__}, pl {pl.__version__}, "
          f"data {args.data}" + (f" (cache built in {build_s} s)" if build_s is not None else ""))
    print(f"{'model':<10} {'loop':<9} {'batch':>5} {'variant':<13} {'img/s':>9} {'ms/step':>9} {'MFU':>7}")
    for r in rows:
        mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        print(f"{r['model']:<10} {r['loop']:<9} {r['batch']:>5} {r['variant']:<13} "
              f"{r['images_per_s']:>9.1f} {r['step_ms']:>9.2f} {mfu:>7}")
    print(json.dumps({"benchmark": "train_throughput", "device": dev_name, "data": args.data,
                      "cache_build_s": build_s, "results": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
