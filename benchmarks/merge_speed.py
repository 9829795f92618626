"""Merge speed and memory on the real key names and shapes of open_clip ViT image towers.

Synthetic checkpoints: random pre-trained weights (a decaying low-rank part plus noise on
matrices), and per task a low-rank-plus-noise update. Three measurements:

1. seconds and peak memory of every (model, T, method, svd, device);
2. the library's exact TSV-M against a straightforward loop of full SVDs per matrix
   (speed-up and relative error; target >= 4x and <= 1e-4 on CPU);
3. streaming: peak resident memory of a child process that runs ``merge_files`` over T
   safetensors checkpoints, against one checkpoint's size (target < 3x).

    python benchmarks/merge_speed.py --quick
    python benchmarks/merge_speed.py --models ViT-B-32 --tasks 8 20 --devices cpu

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MIB, Stopwatch, anon_rss_bytes, emit_json, format_table, peak_memory, rss_bytes  # noqa: E402

# open_clip vision configs, used only when open_clip itself is not installed
_VIT_CONFIGS = {
    "ViT-B-32": dict(width=768, layers=12, patch=32, image=224, embed=512),
    "ViT-L-14": dict(width=1024, layers=24, patch=14, image=224, embed=768),
}
QUICK_METHODS = ["task_arithmetic", "tsvm", "iso_c", "pact+tsvm"]
NO_SVD = {"weight_averaging", "task_arithmetic", "ties"}  # no SVD at all
EXACT_ONLY = {"iso_c"}  # its one SVD decomposes the full sum, which stays exact


def vit_layout(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of open_clip's ``name`` image tower (keys prefixed ``visual.``), built without weights."""
    try:
        import logging

        import open_clip

        logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that no weights were loaded
        model = open_clip.create_model(name, pretrained=None, device="meta")
        return {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("visual.")}
    except ImportError:
        c = _VIT_CONFIGS[name]
        w, grid = c["width"], c["image"] // c["patch"]
        layout = {
            "visual.class_embedding": (w,),
            "visual.positional_embedding": (grid * grid + 1, w),
            "visual.proj": (w, c["embed"]),
            "visual.conv1.weight": (w, 3, c["patch"], c["patch"]),
            "visual.ln_pre.weight": (w,),
            "visual.ln_pre.bias": (w,),
        }
        for i in range(c["layers"]):
            p = f"visual.transformer.resblocks.{i}."
            layout.update({p + "ln_1.weight": (w,), p + "ln_1.bias": (w,)})
            layout.update({p + "attn.in_proj_weight": (3 * w, w), p + "attn.in_proj_bias": (3 * w,)})
            layout.update({p + "attn.out_proj.weight": (w, w), p + "attn.out_proj.bias": (w,)})
            layout.update({p + "ln_2.weight": (w,), p + "ln_2.bias": (w,)})
            layout.update({p + "mlp.c_fc.weight": (4 * w, w), p + "mlp.c_fc.bias": (4 * w,)})
            layout.update({p + "mlp.c_proj.weight": (w, 4 * w), p + "mlp.c_proj.bias": (w,)})
        layout.update({"visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,)})
        return layout


def _low_rank(m: int, n: int, rank: int, top: float, gen: torch.Generator) -> torch.Tensor:
    """(m, n) matrix with ``rank`` singular values top/1, top/2, ... on random (near-orthogonal) bases."""
    a = torch.randn(m, rank, generator=gen) / m**0.5
    b = torch.randn(n, rank, generator=gen) / n**0.5
    s = top / torch.arange(1, rank + 1, dtype=torch.float32)
    return (a * s) @ b.T


def synth_pretrained(layout: dict, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in layout.items():
        if len(shape) == 2:
            m, n = shape
            w = _low_rank(m, n, 32, 2.0, gen) + torch.randn(m, n, generator=gen) * 0.02
        elif key.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight")):
            w = 1.0 + 0.02 * torch.randn(shape, generator=gen)
        else:
            w = 0.02 * torch.randn(shape, generator=gen)
        sd[key] = w.to(dtype)
    return sd


def synth_finetuned(pre: dict, task: int, seed: int, rank: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``pre`` plus a task update: rank-``rank`` decaying part plus noise whose top singular value is ~5% of it."""
    gen = torch.Generator().manual_seed(seed * 1000 + task + 1)
    sd = {}
    for key, w in pre.items():
        if w.ndim == 2:
            m, n = w.shape
            delta = _low_rank(m, n, rank, 1e-2, gen) + torch.randn(m, n, generator=gen) * (5e-4 / (m**0.5 + n**0.5))
        else:
            delta = 1e-4 * torch.randn(w.shape, generator=gen)
        sd[key] = (w.float() + delta).to(dtype)
    return sd


def svd_choices(method: str, wanted: list[str]) -> list[str]:
    base = method.removeprefix("pact+")
    if not method.startswith("pact+") and base in NO_SVD:
        return ["-"]
    if not method.startswith("pact+") and base in EXACT_ONLY:
        return ["exact"] if "exact" in wanted else []
    return wanted


def rel_err(a: dict, b: dict) -> float:
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in b)
    den = sum(float(b[k].double().pow(2).sum()) for k in b)
    return (num / max(den, 1e-300)) ** 0.5


def tsvm_loop(pre: dict, fts: list[dict]) -> dict[str, torch.Tensor]:
    """Straightforward TSV-M: per 2-D key, one full SVD per task, concatenation, full SVDs to whiten."""
    T, out = len(fts), {}
    for key, w0 in pre.items():
        taus = [ft[key].float() - w0.float() for ft in fts]
        if w0.ndim != 2 or not w0.is_floating_point():
            out[key] = sum(taus) / T
            continue
        r = min(w0.shape) // T
        us, ss, vs = [], [], []
        for tau in taus:
            u, s, vh = torch.linalg.svd(tau, full_matrices=False)
            us.append(u[:, :r]), ss.append(s[:r]), vs.append(vh[:r].T)
        u, s, v = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
        p, _, qh = torch.linalg.svd(u, full_matrices=False)
        u = p @ qh
        p, _, qh = torch.linalg.svd(v, full_matrices=False)
        v = p @ qh
        out[key] = (u * s) @ v.T
    return out


def first_blocks(sd: dict, blocks: int) -> dict:
    """Keys outside the transformer plus those of its first ``blocks`` residual blocks (all when < 0)."""
    if blocks < 0:
        return sd
    keep = lambda k: ".resblocks." not in k or int(k.split(".resblocks.")[1].split(".")[0]) < blocks  # noqa: E731
    return {k: v for k, v in sd.items() if keep(k)}


def bench_methods(args, model, T, pre, fts, devices, rows, results):
    from pactmerge.merging import merge

    for device in devices:
        merge(first_blocks(pre, 0), [first_blocks(f, 0) for f in fts[:2]], "tsvm", device=device)  # warm-up
        for method in args.methods:
            exact_tau = None
            for svd in svd_choices(method, args.svd):
                params = {} if svd == "-" else {"svd": svd, **({"seed": 0} if svd == "randomized" else {})}
                row = dict(model=model, T=T, method=method, svd=svd, device=device)
                try:
                    with peak_memory(device) as peak, Stopwatch(cuda=device == "cuda") as sw:
                        res = merge(pre, fts, method, params=params, device=device)
                except Exception as exc:  # a failing method is reported, the others still run
                    row.update(status=f"error: {type(exc).__name__}: {str(exc)[:120]}")
                    rows.append(row)
                    print(f"  {method} {svd} {device}: {row['status']}", file=sys.stderr, flush=True)
                    continue
                row.update(seconds=sw.seconds, peak_mib=(peak.cuda if device == "cuda" else peak.rss) / MIB, status="ok")
                if svd == "exact":
                    exact_tau = res.tau
                elif svd == "randomized" and exact_tau is not None:
                    row["rel_err_vs_exact"] = rel_err(res.tau, exact_tau)
                rows.append(row)
                results[f"{model}/T{T}/{method}/{svd}/{device}"] = {
                    k: row.get(k) for k in ("seconds", "peak_mib", "rel_err_vs_exact")
                }
                print(f"  {method:22s} {svd:10s} {device:4s} {sw.seconds:8.2f} s", file=sys.stderr, flush=True)
                del res


def bench_baseline(args, model, T, pre, fts):
    from pactmerge.merging import merge

    sub_pre = first_blocks(pre, args.baseline_blocks)
    sub_fts = [first_blocks(f, args.baseline_blocks) for f in fts]
    with Stopwatch() as sw_loop:
        ref = tsvm_loop(sub_pre, sub_fts)
    with Stopwatch() as sw_lib:
        res = merge(sub_pre, sub_fts, "tsvm", params={"svd": "exact"}, device="cpu")
    return dict(
        model=model, T=T, blocks=args.baseline_blocks, loop_s=sw_loop.seconds, library_s=sw_lib.seconds,
        speedup=sw_loop.seconds / sw_lib.seconds, rel_err=rel_err(res.tau, ref),
    )


def bench_streaming(args) -> dict:
    """Write T ViT-B/32 checkpoints as safetensors, merge them in a child process, report its peak RSS."""
    from safetensors.torch import save_file

    layout = vit_layout("ViT-B-32")
    with tempfile.TemporaryDirectory(dir=args.stream_dir) as tmp:
        pre = synth_pretrained(layout, args.seed, torch.float32)
        pre_path = Path(tmp) / "pretrained.safetensors"
        save_file(pre, str(pre_path))
        paths = []
        for t in range(args.stream_tasks):
            paths.append(Path(tmp) / f"task{t:02d}.safetensors")
            save_file(synth_finetuned(pre, t, args.seed, args.rank, torch.float32), str(paths[-1]))
        del pre
        ckpt = pre_path.stat().st_size
        spec = dict(pretrained=str(pre_path), finetuned=[str(p) for p in paths], method=args.stream_method,
                    params={"svd": args.stream_svd} if args.stream_method.removeprefix("pact+") not in NO_SVD else {})
        proc = subprocess.run([sys.executable, __file__, "--stream-child", json.dumps(spec)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            return dict(status=f"error: {proc.stderr.strip()[-300:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(
        status="ok", T=args.stream_tasks, method=args.stream_method, svd=args.stream_svd, checkpoint_mib=ckpt / MIB,
        **child, ratio_max_rss=child["max_rss_mib"] / (ckpt / MIB),
        ratio_above_imports=(child["max_rss_mib"] - child["rss_after_imports_mib"]) / (ckpt / MIB),
    )


def _vm_hwm_bytes() -> int:
    """Peak resident set of this address space (VmHWM). Unlike ru_maxrss, which Linux keeps
    across execve and so would count the forking parent's memory, it starts afresh in the child."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def stream_child(spec_json: str) -> None:
    """Child process body: run merge_files, print its own peak RSS (VmHWM) as JSON."""
    from pactmerge.merging import merge_files

    spec = json.loads(spec_json)
    base = rss_bytes()
    with peak_memory("cpu") as peak, Stopwatch() as sw:
        merge_files(spec["pretrained"], spec["finetuned"], spec["method"], params=spec["params"], device="cpu")
    print(json.dumps(dict(
        seconds=sw.seconds, max_rss_mib=_vm_hwm_bytes() / MIB,
        rss_after_imports_mib=base / MIB, peak_anon_above_start_mib=peak.anon / MIB,
        anon_at_end_mib=anon_rss_bytes() / MIB,
    )))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="ViT-B/32, T=8, a few methods, 2 blocks of baseline, 8 streamed tasks")
    p.add_argument("--models", nargs="+", default=None, choices=sorted(_VIT_CONFIGS), help="default: both")
    p.add_argument("--tasks", nargs="+", type=int, default=None, help="numbers of tasks T (default: 8 20)")
    p.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    p.add_argument("--svd", nargs="+", default=["exact", "randomized"], choices=["exact", "randomized"])
    p.add_argument("--devices", nargs="+", default=None, choices=["cpu", "cuda"], help="default: cpu, and cuda when present")
    p.add_argument("--skip", nargs="*", default=[], metavar="MODEL/T", help="configurations to skip, e.g. ViT-L-14/20")
    p.add_argument("--storage-dtype", choices=["float32", "bfloat16"], default="float32", help="dtype of the synthetic checkpoints")
    p.add_argument("--rank", type=int, default=16, help="rank of each synthetic task update")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-speed", action="store_true", help="skip the per-method timings")
    p.add_argument("--no-baseline", action="store_true", help="skip the loop-of-SVDs TSV-M comparison")
    p.add_argument("--baseline-blocks", type=int, default=None, help="residual blocks in the comparison (default: all; quick: 2)")
    p.add_argument("--no-stream", action="store_true", help="skip the streaming memory measurement")
    p.add_argument("--stream-tasks", type=int, default=None, help="checkpoints streamed (default 20; quick 8)")
    p.add_argument("--stream-method", default="tsvm")
    p.add_argument("--stream-svd", default="randomized", choices=["exact", "randomized"])
    p.add_argument("--stream-dir", default=None, help="where the streamed checkpoints are written (deleted after)")
    p.add_argument("--stream-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = args.models or (["ViT-B-32"] if args.quick else ["ViT-B-32", "ViT-L-14"])
    args.tasks = args.tasks or ([8] if args.quick else [8, 20])
    args.baseline_blocks = args.baseline_blocks if args.baseline_blocks is not None else (2 if args.quick else -1)
    args.stream_tasks = args.stream_tasks or (8 if args.quick else 20)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stream_child:
        stream_child(args.stream_child)
        return 0
    from pactmerge.merging import available_methods

    args.methods = args.methods or (QUICK_METHODS if args.quick else list(available_methods()))
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    dtype = getattr(torch, args.storage_dtype)
    started, load_before = time.perf_counter(), os.getloadavg()
    rows, results, baselines = [], {}, []
    for model in args.models:
        layout = vit_layout(model)
        for T in args.tasks:
            if f"{model}/{T}" in args.skip:
                continue
            print(f"{model} T={T}: building checkpoints", file=sys.stderr, flush=True)
            pre = synth_pretrained(layout, args.seed, dtype)
            fts = [synth_finetuned(pre, t, args.seed, args.rank, dtype) for t in range(T)]
            if not args.no_speed:
                bench_methods(args, model, T, pre, fts, devices, rows, results)
            if not args.no_baseline:
                baselines.append(bench_baseline(args, model, T, pre, fts))
                print(f"  baseline: {baselines[-1]}", file=sys.stderr, flush=True)
            del pre, fts
    stream = None if args.no_stream else bench_streaming(args)

    load_after = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {os.cpu_count()} CPUs, load average "
          f"(1 min) {load_before[0]:.1f} at start and {load_after[0]:.1f} at end"
          + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    if rows:
        print("\nseconds and peak memory above the inputs (host RSS on CPU, allocated on CUDA):")
        print(format_table(rows, ["model", "T", "method", "svd", "device", "seconds", "peak_mib", "rel_err_vs_exact", "status"]))
    if baselines:
        print("\nexact TSV-M against a loop of full SVDs per matrix, CPU (blocks = residual blocks included, -1 = all):")
        print(format_table(baselines, ["model", "T", "blocks", "loop_s", "library_s", "speedup", "rel_err"]))
    if stream:
        print("\nstreaming merge_files in a child process (MiB; ratio = peak RSS / one checkpoint):")
        print(format_table([stream], [k for k in stream if k != "status"] + ["status"]))
    emit_json(dict(benchmark="merge_speed", total_s=time.perf_counter() - started, threads=torch.get_num_threads(),
                   loadavg_start=load_before[0], loadavg_end=load_after[0],
                   results=results, baseline=baselines, streaming=stream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
