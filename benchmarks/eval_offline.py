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

A second table places the study's path against what this CPU can do: the convolutions of the
folded + fused encoder, by kind (full k x k ones such as the stem, depthwise, 1x1
pointwise), with their flops per pass (2 multiply-adds' worth per kernel tap of every output
value), the time their calls take (timed by hooks, in passes of their own after the timed ones)
and the GFLOP/s that makes, against one square matrix product of ``--peak-size`` at the same
precision (the best any of them could do here).

Last stdout line: one JSON object.

    python benchmarks/eval_offline.py [--images 1024] [--batch-size 128] [--precision auto]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

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
    p.add_argument("--peak-size", type=int, default=2048, help="side of the square matrix product timed as the peak")
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
    kinds = conv_roofline(variants["folded+fused"], features, args.repeats)
    peak = matmul_gflops(args.peak_size, torch.bfloat16 if precision == "bf16" else torch.float32, args.repeats)
    total = {"kind": "all convolutions", "layers": sum(k["layers"] for k in kinds),
             "gflop_per_pass": sum(k["gflop_per_pass"] for k in kinds),
             "ms_per_pass": sum(k["ms_per_pass"] for k in kinds)}
    kinds.append(total)
    for k in kinds:
        k["gflop_per_s"] = round(k["gflop_per_pass"] / (k["ms_per_pass"] / 1e3), 1) if k["ms_per_pass"] else None
        k["share_of_peak"] = round(k["gflop_per_s"] / peak, 3) if k["gflop_per_s"] else None
        k["gflop_per_pass"], k["ms_per_pass"] = round(k["gflop_per_pass"], 3), round(k["ms_per_pass"], 2)
    print(f"\nconvolutions of folded+fused, {args.images} images per pass (best of {args.repeats}); peak = one "
          f"{args.peak_size}x{args.peak_size} matrix product at the same precision: {peak:.1f} GFLOP/s")
    print(format_table(kinds, ["kind", "layers", "gflop_per_pass", "ms_per_pass", "gflop_per_s", "share_of_peak"]))
    emit_json({"benchmark": "eval_offline", "threads": threads, "precision": precision, "batch": args.batch_size,
               "images": args.images, "repeats": args.repeats, "rows": rows,
               "roofline": {"peak_gflop_per_s": round(peak, 1), "peak_size": args.peak_size, "kinds": kinds}})
    return 0


def conv_kind(conv: torch.nn.Conv2d) -> str:
    if conv.groups > 1:
        return "depthwise" if conv.groups == conv.in_channels else "grouped"
    return "pointwise 1x1" if tuple(conv.kernel_size) == (1, 1) else "full kxk"


def conv_flops(conv: torch.nn.Conv2d, out_shape: Sequence[int]) -> int:
    """Flops of one call: 2 per multiply-add, ``in_channels / groups * kh * kw`` of them per output value."""
    per_out = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    return 2 * per_out * math.prod(out_shape)


def conv_roofline(module: torch.nn.Module, run: Any, repeats: int) -> list[dict[str, Any]]:
    """Per kind of convolution in ``module``: layers, GFLOP and milliseconds of one ``run(module)`` pass
    (the fastest of ``repeats`` for each layer), timed by forward hooks."""
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    flops = dict.fromkeys(convs, 0)
    spent = dict.fromkeys(convs, 0.0)
    start: dict[torch.nn.Module, float] = {}

    def before(mod, _inp):
        start[mod] = time.perf_counter()

    def after(mod, _inp, out):
        spent[mod] += time.perf_counter() - start[mod]
        flops[mod] += conv_flops(mod, out.shape)

    hooks = [h for c in convs for h in (c.register_forward_pre_hook(before), c.register_forward_hook(after))]
    best: dict[torch.nn.Module, float] = {}
    try:
        for _ in range(max(1, repeats)):
            for c in convs:
                spent[c], flops[c] = 0.0, 0
            run(module)
            best = {c: min(best.get(c, spent[c]), spent[c]) for c in convs}
    finally:
        for h in hooks:
            h.remove()
    kinds: dict[str, dict[str, Any]] = {}
    for c in convs:
        kind = conv_kind(c)
        k = kinds.setdefault(kind, {"kind": kind, "layers": 0, "gflop_per_pass": 0.0, "ms_per_pass": 0.0})
        k["layers"] += 1
        k["gflop_per_pass"] += flops[c] / 1e9
        k["ms_per_pass"] += best[c] * 1e3
    return list(kinds.values())


def matmul_gflops(n: int, dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of the fastest of ``repeats`` products of two seeded (n, n) matrices of ``dtype``."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


if __name__ == "__main__":
    sys.exit(main())
