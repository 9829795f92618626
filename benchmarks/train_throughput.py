"""Training throughput of ``CLIPFineTuner`` inside a Lightning Trainer (images/s).

Random-init open_clip image towers, synthetic inputs already on the device (data loading is
not measured), frozen random orthonormal heads, AdamW + clipping as in the standard recipe.
On CUDA: ViT-B-32 and ViT-B-16 (batch 128) and ViT-L-14 (batch 64), each with the default
path (bf16-mixed + torch.compile; ``--no-compile`` turns compile off) and fp32. Without CUDA:
a tiny ViT on the CPU. ``--plain`` adds the same step in a plain PyTorch loop (no Lightning)
for comparison. Prints a table; the last stdout line is one JSON object.

    python benchmarks/train_throughput.py [--models ViT-B-32 ...] [--steps 30] [--no-compile] [--plain]
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


def measure(name: str, batch: int, precision: str, compile_: bool, steps: int, warmup: int, device: str) -> dict:
    encoder, size = _encoder(name)
    dim = encoder(torch.zeros(1, 3, size, size)).shape[-1]
    recipe = Recipe(max_steps=warmup + steps, warmup_steps=1, precision=precision, compile=compile_,
                    batch_size=batch)
    module = CLIPFineTuner(encoder, {"synthetic": orthonormal_head("synthetic", 10, dim)}, 100.0, recipe)
    timer = _Timer(warmup)
    trainer = pl.Trainer(accelerator="cuda" if device == "cuda" else "cpu", devices=1, precision=precision,
                         max_steps=warmup + steps, gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, train_dataloaders=_Synthetic(warmup + steps, batch, size, 10, device))
    elapsed = timer.end - timer.start
    return {"model": name, "batch": batch, "precision": precision, "compile": compile_, "steps": steps,
            "loop": "lightning", "images_per_s": round(batch * steps / elapsed, 1),
            "step_ms": round(1000 * elapsed / steps, 2)}


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
            "loop": "plain", "images_per_s": round(batch * steps / elapsed, 1),
            "step_ms": round(1000 * elapsed / steps, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", help="open_clip model names (default: ViT-B-32 ViT-B-16 ViT-L-14 on "
                   "CUDA, 'tiny' on CPU)")
    p.add_argument("--batch-size", type=int, help="override the per-model batch size")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10 on CUDA, 3 on CPU)")
    p.add_argument("--no-compile", action="store_true", help="default path without torch.compile")
    p.add_argument("--no-fp32", action="store_true", help="skip the fp32 variant")
    p.add_argument("--plain", action="store_true", help="also time a plain PyTorch loop (no Lightning)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    args = p.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 variant as the public recipe ran it
        torch.backends.cudnn.allow_tf32 = True
        models = {m: GPU_MODELS.get(m, 128) for m in (args.models or GPU_MODELS)}
        variants = [("bf16-mixed", not args.no_compile)] + ([] if args.no_fp32 else [("32-true", False)])
        warmup = 10 if args.warmup is None else args.warmup
    else:
        models = {m: 32 for m in (args.models or ["tiny"])}
        variants = [("32-true", False)]
        warmup = 3 if args.warmup is None else args.warmup
    rows = []
    for name, batch in models.items():
        for precision, comp in variants:
            rows.append(measure(name, args.batch_size or batch, precision, comp, args.steps, warmup, device))
            if args.plain:
                rows.append(measure_plain(name, args.batch_size or batch, precision, comp, args.steps, warmup, device))
            torch.cuda.empty_cache() if device == "cuda" else None
    dev_name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"CLIPFineTuner training throughput on {dev_name}, torch {torch.__version__}, pl {pl.__version__}")
    print(f"{'model':<10} {'loop':<9} {'batch':>5} {'precision':<11} {'compile':<7} {'img/s':>9} {'ms/step':>9}")
    for r in rows:
        print(f"{r['model']:<10} {r['loop']:<9} {r['batch']:>5} {r['precision']:<11} {str(r['compile']):<7} "
              f"{r['images_per_s']:>9.1f} {r['step_ms']:>9.2f}")
    print(json.dumps({"benchmark": "train_throughput", "device": dev_name, "results": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
