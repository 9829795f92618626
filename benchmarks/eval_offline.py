"""Evaluation throughput of the offline default's encoder on the CPU: unfolded, folded, folded and fused.

The α search and the evaluate stage of the default study send every validation and test image
through the pre-trained EfficientNet-Lite0 tower at 64x64 (or a merge of it). This benchmark
times the three ways ``pipeline`` can run that encoder, side by side in one process on the same
inputs, in batches of ``--batch-size`` (the study's ``data.eval_batch_size``):

- ``unfolded``: the encoder as loaded (convolution, BatchNorm, activation), channels-last;
- ``folded``: ``pipeline.fold.FoldedEncoder(..., fuse=False)``, each BatchNorm folded into its
  convolution, the activation a separate pass;
- ``folded+fused``: the study's path, the activation applied inside the convolution's oneDNN call.

Each variant runs ``--repeats`` timed passes after a warm-up pass, in turn (so a drift of the
machine touches all of them); the best pass counts. The inputs are seeded normal images (the
speed does not depend on their content). The table also gives the largest difference of each
variant's features from the folded one's: the fused path is expected to give the same bits.
Last stdout line: one JSON object.

    python benchmarks/eval_offline.py [--images 1024] [--batch-size 128] [--precision auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_json, format_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from pactmerge.pipeline.evaluate import _autocast, resolve_precision
    from pactmerge.pipeline.fold import FoldedEncoder
    from pactmerge.pipeline.model import load_model
    from pactmerge.pipeline.model_spec import ModelSpec

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024, help="images per timed pass")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward call (the study's default: 128)")
    p.add_argument("--precision", choices=["auto", "32", "bf16"], default="auto",
                   help="as merge.eval_precision: auto is bf16 on CPUs with native bf16 instructions")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per variant; the best counts")
    args = p.parse_args(argv)

    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    loaded = load_model(ModelSpec(name="efficientnet_lite0_clip", image_size=64))
    size = int(loaded.image_size)
    encoder = loaded.encoder.eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    probe = torch.randn(2, 3, size, size, generator=gen)

    variants = {"unfolded": encoder.to(memory_format=torch.channels_last)}
    for name, fuse in (("folded", False), ("folded+fused", True)):
        folded = FoldedEncoder(encoder, probe, fuse=fuse)
        if not folded.folded:
            raise SystemExit(f"the offline encoder was not folded ({name}): nothing to compare")
        variants[name] = folded.module.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def features(module: torch.nn.Module) -> torch.Tensor:
        with _autocast(device, precision):
            return torch.cat([module(images[i:i + args.batch_size]).float()
                              for i in range(0, args.images, args.batch_size)])

    outputs = {name: features(module) for name, module in variants.items()}  # the warm-up pass
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, module in variants.items():
            t0 = time.perf_counter()
            features(module)
            times[name].append(time.perf_counter() - t0)

    base = min(times["unfolded"])
    rows = []
    for name in variants:
        best = min(times[name])
        rows.append({"variant": name, "images_per_s": int(round(args.images / best)), "best_s": round(best, 4),
                     "speedup_vs_unfolded": round(base / best, 3),
                     "max_abs_diff_vs_folded": float((outputs[name] - outputs["folded"]).abs().max())})
    threads = torch.get_num_threads()
    print(f"offline default encoder (EfficientNet-Lite0 at {size}x{size}) on the CPU, {threads} threads, "
          f"{'bf16 autocast' if precision == 'bf16' else 'float32'}, batch {args.batch_size}, {args.images} images "
          f"per pass, best of {args.repeats}")
    print(format_table(rows, ["variant", "images_per_s", "best_s", "speedup_vs_unfolded", "max_abs_diff_vs_folded"]))
    emit_json({"benchmark": "eval_offline", "threads": threads, "precision": precision, "batch": args.batch_size,
               "images": args.images, "repeats": args.repeats, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
