"""Evaluation throughput of a merged encoder (images/s; bf16 autocast on CUDA).

Builds a random-init open_clip image tower, ``--tasks`` synthetic fine-tunes of it (small
random updates), merges them with ``pactmerge.merging.merge`` (``--method``, on the device),
and evaluates the merged encoder with ``pipeline.evaluate.evaluate_encoder`` over the test
split of a generated JPEG data set read through the pre-decoded cache and device-side
normalisation, as the study's evaluation stage does. The first pass warms up (compile of
kernels, cache pages); the best of ``--repeats`` timed passes counts. MFU against the
device's dense bf16 peak (see ``train_throughput.py``). Last stdout line: one JSON object.

    python benchmarks/eval_throughput.py [--model ViT-B-32] [--images 4096] [--batch-size 512]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import CacheData, _encoder, forward_flops, peak_flops  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from pactmerge.merging import merge
    from pactmerge.pipeline.evaluate import evaluate_encoder
    from pactmerge.pipeline.heads import orthonormal_head

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="open_clip model name (default ViT-B-32 on CUDA, 'tiny' on CPU)")
    p.add_argument("--tasks", type=int, default=8, help="synthetic fine-tunes merged")
    p.add_argument("--method", default="tsvm")
    p.add_argument("--images", type=int, default=4096, help="test images evaluated per pass")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--source-size", type=int, default=64, help="side of the generated JPEGs, upsampled into the cache")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2, help="timed passes after the warm-up pass; the best counts")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    args = p.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    name = args.model or ("ViT-B-32" if device == "cuda" else "tiny")

    encoder, size = _encoder(name)
    flops = forward_flops(encoder, size)
    pre = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    fts = [{k: (v + 1e-3 * torch.randn(v.shape, generator=gen)) if v.is_floating_point() else v for k, v in pre.items()}
           for _ in range(args.tasks)]
    t0 = time.perf_counter()
    res = merge(pre, fts, args.method, device=device)
    merge_s = time.perf_counter() - t0
    merged = res.apply(pre)
    del fts

    with tempfile.TemporaryDirectory(prefix="pactmerge-eval-bench-") as tmp:
        data = CacheData(Path(tmp), args.images, size, args.source_size, args.num_workers)
        dm = data.module(args.batch_size)
        # evaluation reads the test split: the generated set has --images of them
        dm.setup()
        n_test = dm.split_sizes()["test"]
        dim = encoder(torch.zeros(1, 3, size, size)).shape[-1]
        heads = {"bench": orthonormal_head("bench", 10, dim)}
        times = []
        for i in range(1 + args.repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            acc = evaluate_encoder(encoder, merged if i == 0 else None, heads, {"bench": dm}, split="test",
                                   device=device)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    best = min(times[1:]) if len(times) > 1 else times[0]
    rate = n_test / best
    peak = peak_flops(device, "bf16-mixed", args.peak_tflops)
    dev_name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    precision = "bf16 autocast" if device == "cuda" else "fp32 (evaluate_encoder uses bf16 on CUDA only)"
    row = {"model": name, "method": args.method, "tasks": args.tasks, "images": n_test, "batch": args.batch_size,
           "precision": precision, "images_per_s": round(rate, 1), "seconds": round(best, 3),
           "warmup_s": round(times[0], 3), "merge_s": round(merge_s, 3), "accuracy": acc["bench"],
           "mfu": None if peak is None else round(rate * flops / peak, 4)}
    print(f"evaluation of a merged {name} ({args.method}, {args.tasks} tasks) on {dev_name}, {precision}")
    print(f"  {n_test} test images, batch {args.batch_size}: {rate:.0f} images/s (best of {args.repeats} passes, "
          f"{best:.2f} s; warm-up pass {times[0]:.2f} s)" + ("" if row["mfu"] is None else f", MFU {100 * row['mfu']:.1f}%"))
    print(json.dumps({"benchmark": "eval_throughput", "device": dev_name, "result": row}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
