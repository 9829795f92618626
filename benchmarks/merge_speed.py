"""Merge speed and memory on the real key names and shapes of open_clip ViT image towers.

Synthetic checkpoints: random pre-trained weights (a decaying low-rank part plus noise on
matrices), and per task a low-rank-plus-noise update. Four measurements:

1. seconds and peak memory of every (model, T, method, svd, device), on the tower's first
   ``--blocks`` residual blocks (all with ``--blocks -1``);
2. the library's exact TSV-M against a straightforward loop of full SVDs per matrix
   (speed-up and relative error; target >= 4x and <= 1e-4 on CPU);
3. streaming: peak resident memory of a child process that runs ``merge_files`` over T
   safetensors checkpoints, against one checkpoint's size (target < 3x);
4. peer (optional): ``pactmerge merge --method tsvm`` against fusion_bench's TSV-M
   (``compute_and_sum_svd_mem_reduction``) on the same safetensors files, each a whole
   process (imports, loading, merging, writing), as a ratio of wall times. fusion_bench is
   run by ``--peer-python`` (default: this interpreter; or ``$PACTMERGE_PEER_PYTHON``), so it
   can live in a venv of its own; the row is skipped with a note when it cannot be imported.

Three sizes; every part's size can also be set on its own (``--blocks``, ``--baseline-blocks``,
``--stream-tasks``, ``--peer-blocks``, ...):

    python benchmarks/merge_speed.py           # default: ViT-B/32, T=8, 1 block; minutes on 2 idle cores
    python benchmarks/merge_speed.py --quick   # smaller still: a smoke run
    python benchmarks/merge_speed.py --full    # ViT-B/32 and ViT-L/14, T=8 and 20, every method, whole towers

Progress goes to stderr; stdout has the tables, and its last line is one JSON object.
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
    "tiny": dict(width=32, layers=2, patch=8, image=32, embed=16),  # for dry runs and tests
}
QUICK_METHODS = ["task_arithmetic", "tsvm", "iso_c", "pact+tsvm"]
DEFAULT_METHODS = ["task_arithmetic", "ties", "tsvm", "iso_c", "iso_cts", "pact+tsvm", "pact+iso_c"]
# every size of every part, per preset; an explicit flag overrides its entry
PRESETS = {
    "quick": dict(models=["ViT-B-32"], tasks=[4], methods=QUICK_METHODS, blocks=1, baseline_blocks=1,
                  stream_tasks=4, peer_tasks=4, peer_blocks=1),
    "default": dict(models=["ViT-B-32"], tasks=[8], methods=DEFAULT_METHODS, blocks=1, baseline_blocks=1,
                    stream_tasks=8, peer_tasks=8, peer_blocks=1),
    "full": dict(models=["ViT-B-32", "ViT-L-14"], tasks=[8, 20], methods=None, blocks=-1, baseline_blocks=-1,
                 stream_tasks=20, peer_tasks=8, peer_blocks=4),
}
PEER_MODULE = "fusion_bench.method.task_singular_vector.utils.TSVM_utils"
NO_SVD = {"weight_averaging", "task_arithmetic", "ties"}  # no SVD at all
EXACT_ONLY = {"iso_c"}  # its one SVD decomposes the full sum, which stays exact


def vit_layout(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of open_clip's ``name`` image tower (keys prefixed ``visual.``), built without weights."""
    try:
        if name not in ("ViT-B-32", "ViT-B-16", "ViT-L-14"):
            raise ImportError  # not an open_clip name: one of the fallback configs
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


# Task-vector spectra of the offline study (EfficientNet-Lite0 CLIP, 60 steps, lr 5e-4; the 26 matrix keys
# with min(m, n) >= 32, convolutions as (out, in*kh*kw)): s_i / s_1 follows i^-p with p = 0.38..0.68 (median
# 0.5) over the first 16 values, s_32 / s_1 = 0.07..0.24, s_min / s_1 = 0.005..0.08, and 90% of the energy
# lies in the top 9%..47% of min(m, n). The synthetic fine-tunes copy that shape (docs/merging.md).
SPECTRUM_POWER = 0.55
LOW_RANK_FRACTION = 0.25  # rank of the power-law part, as a fraction of min(m, n)


def _low_rank(m: int, n: int, rank: int, top: float, gen: torch.Generator, power: float = 1.0) -> torch.Tensor:
    """(m, n) matrix with ``rank`` singular values top * i^-power on random (near-orthogonal) bases."""
    dev = gen.device
    a = torch.randn(m, rank, generator=gen, device=dev) / m**0.5
    b = torch.randn(n, rank, generator=gen, device=dev) / n**0.5
    s = top * torch.arange(1, rank + 1, dtype=torch.float32, device=dev).pow(-power)
    return (a * s) @ b.T


def synth_pretrained(layout: dict, seed: int, dtype: torch.dtype, build_device: str = "cpu") -> dict[str, torch.Tensor]:
    """Pre-trained weights on the CPU (``build_device="cuda"`` draws them on the GPU, faster for ViT-L/14)."""
    gen = torch.Generator(device=build_device).manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen, device=build_device)  # noqa: E731
    sd = {}
    for key, shape in layout.items():
        if len(shape) == 2:
            m, n = shape
            w = _low_rank(m, n, 32, 2.0, gen) + randn(m, n) * 0.02
        elif key.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight")):
            w = 1.0 + 0.02 * randn(shape)
        else:
            w = 0.02 * randn(shape)
        sd[key] = w.to(dtype).cpu()
    return sd


def synth_finetuned(pre: dict, task: int, seed: int, rank: int, dtype: torch.dtype,
                    build_device: str = "cpu") -> dict[str, torch.Tensor]:
    """``pre`` plus a task update shaped like the offline study's (``SPECTRUM_POWER``): on matrices a part of
    rank ``rank`` (0: ``LOW_RANK_FRACTION`` of min(m, n)) with singular values 1e-2 * i^-0.55, plus Gaussian
    noise whose top singular value is half the part's smallest, so the spectrum decays all the way down."""
    gen = torch.Generator(device=build_device).manual_seed(seed * 1000 + task + 1)
    sd = {}
    for key, w in pre.items():
        w = w.to(build_device)
        if w.ndim == 2:
            m, n = w.shape
            k = min(rank or max(1, int(LOW_RANK_FRACTION * min(m, n))), min(m, n))
            floor = 0.5 * 1e-2 * k**-SPECTRUM_POWER
            noise = torch.randn(m, n, generator=gen, device=build_device) * (floor / (m**0.5 + n**0.5))
            delta = _low_rank(m, n, k, 1e-2, gen, SPECTRUM_POWER) + noise
        else:
            delta = 1e-4 * torch.randn(w.shape, generator=gen, device=build_device)
        sd[key] = (w.float() + delta).to(dtype).cpu()
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
    """Straightforward TSV-M: per 2-D key, one full SVD per task, concatenation, full SVDs to whiten.

    The SVDs run under the library's thread policy (``linalg.per_matrix``: one matrix per worker,
    each single-threaded), so the speed-up compares the algorithms, not how each copes with load."""
    from pactmerge.merging.linalg import per_matrix

    svd = lambda x: torch.linalg.svd(x, full_matrices=False)  # noqa: E731
    T, out = len(fts), {}
    for key, w0 in pre.items():
        taus = [ft[key].float() - w0.float() for ft in fts]
        if w0.ndim != 2 or not w0.is_floating_point():
            out[key] = sum(taus) / T
            continue
        r = min(w0.shape) // T
        us, ss, vs = [], [], []
        for u, s, vh in per_matrix(svd, taus):
            us.append(u[:, :r]), ss.append(s[:r]), vs.append(vh[:r].T)
        u, s, v = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
        (pu, _, qu), (pv, _, qv) = per_matrix(svd, [u, v])
        u, v = pu @ qu, pv @ qv
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
                row = dict(model=model, T=T, blocks=args.blocks, method=method, svd=svd, device=device)
                try:
                    with peak_memory(device) as peak, Stopwatch(cuda=device == "cuda") as sw:
                        res = merge(pre, fts, method, params=params, device=device)
                except Exception as exc:  # a failing method is reported, the others still run
                    row.update(status=f"error: {type(exc).__name__}: {str(exc)[:120]}")
                    rows.append(row)
                    print(f"  {method} {svd} {device}: {row['status']}", file=sys.stderr, flush=True)
                    continue
                row.update(seconds=sw.seconds, peak_mib=(peak.cuda if device == "cuda" else peak.rss) / MIB, status="ok",
                           load=os.getloadavg()[0])
                if svd == "exact":
                    exact_tau = res.tau
                elif svd == "randomized" and exact_tau is not None:
                    row["rel_err_vs_exact"] = rel_err(res.tau, exact_tau)
                rows.append(row)
                results[f"{model}/T{T}/{method}/{svd}/{device}"] = {
                    k: row.get(k) for k in ("blocks", "seconds", "peak_mib", "rel_err_vs_exact")
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
        speedup=sw_loop.seconds / sw_lib.seconds, rel_err=rel_err(res.tau, ref), load=os.getloadavg()[0],
    )


def write_checkpoints(directory: Path, layout: dict, T: int, args) -> tuple[Path, list[Path]]:
    """Synthetic pre-trained and ``T`` fine-tuned checkpoints of ``layout`` as safetensors files in ``directory``."""
    from safetensors.torch import save_file

    pre = synth_pretrained(layout, args.seed, torch.float32, args.build_device)
    pre_path = directory / "pretrained.safetensors"
    save_file(pre, str(pre_path))
    paths = []
    for t in range(T):
        paths.append(directory / f"task{t:02d}.safetensors")
        save_file(synth_finetuned(pre, t, args.seed, args.rank, torch.float32, args.build_device), str(paths[-1]))
    return pre_path, paths


def bench_streaming(args) -> dict:
    """Write T checkpoints of ``--stream-model`` as safetensors, merge them in a child process, report its peak RSS."""
    layout = vit_layout(args.stream_model)
    with tempfile.TemporaryDirectory(dir=args.stream_dir) as tmp:
        pre_path, paths = write_checkpoints(Path(tmp), layout, args.stream_tasks, args)
        ckpt = pre_path.stat().st_size
        spec = dict(pretrained=str(pre_path), finetuned=[str(p) for p in paths], method=args.stream_method,
                    params={"svd": args.stream_svd} if args.stream_method.removeprefix("pact+") not in NO_SVD else {})
        proc = subprocess.run([sys.executable, __file__, "--stream-child", json.dumps(spec)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            return dict(status=f"error: {proc.stderr.strip()[-300:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
    torch_mib = torch_baseline_mib()
    return dict(
        model=args.stream_model, T=args.stream_tasks, method=args.stream_method, svd=args.stream_svd,
        checkpoint_mib=ckpt / MIB, torch_import_mib=torch_mib, **child, ratio_max_rss=child["max_rss_mib"] / (ckpt / MIB),
        ratio_above_torch=(child["max_rss_mib"] - torch_mib) / (ckpt / MIB),
        ratio_above_imports=(child["max_rss_mib"] - child["rss_after_imports_mib"]) / (ckpt / MIB),
        load=os.getloadavg()[0], status="ok",
    )


TORCH_BASELINE = "import torch; print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])"


def torch_baseline_mib() -> float:
    """Peak RSS of a process that only imports torch (its libraries' pages included), MiB."""
    proc = subprocess.run([sys.executable, "-c", TORCH_BASELINE], capture_output=True, text=True, check=True)
    return int(proc.stdout.strip().splitlines()[-1]) * 1024 / MIB


PEER_SCRIPT = Path(__file__).resolve().parent / "_peer_fusion_bench.py"


def peer_available(python: str) -> tuple[bool, str]:
    """Whether ``python`` runs and finds a ``fusion_bench`` package (cheap: nothing heavy is imported);
    otherwise a note saying why and what to do."""
    probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('fusion_bench') else 3)"
    try:
        proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{python} could not be run ({type(exc).__name__}: {exc})"
    if proc.returncode == 0:
        return True, ""
    return False, _peer_note(python, "no fusion_bench package" if proc.returncode == 3 else proc.stderr.strip()[-160:])


def _peer_note(python: str, why: str) -> str:
    return (f"fusion_bench is not importable by {python} ({why}); install fusion-bench in a venv of its own "
            "and pass --peer-python VENV/bin/python (or set PACTMERGE_PEER_PYTHON)")


def _children_cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed_run(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the child, the finished process)."""
    c0, t0 = _children_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, _children_cpu_s() - c0, proc


def bench_peer(args) -> dict:
    """Whole-process wall time of ``pactmerge merge --method tsvm`` and of fusion_bench's TSV-M on the same files.

    Both read the same safetensors files, merge on the CPU with alpha 1 and write the merged
    weights; ``ratio`` = fusion_bench seconds / pactmerge seconds (> 1: pactmerge is faster),
    ``rel_err`` = ||tau_pactmerge - tau_fusion_bench|| / ||tau_fusion_bench|| over all keys.
    ``merge_ratio``: the same for the merge call alone (pactmerge: loading included, see its sidecar's
    ``load_and_merge_s``; fusion_bench: ``compute_and_sum_svd_mem_reduction`` only).
    """
    from safetensors.torch import load_file

    row = dict(model=args.peer_model, T=args.peer_tasks, blocks=args.peer_blocks)
    ok, note = peer_available(args.peer_python)
    if not ok:
        return {**row, "status": "skipped", "note": note}
    layout = first_blocks(vit_layout(args.peer_model), args.peer_blocks)
    with tempfile.TemporaryDirectory(dir=args.stream_dir) as tmp:
        pre_path, paths = write_checkpoints(Path(tmp), layout, args.peer_tasks, args)
        ours, theirs = Path(tmp) / "pactmerge.safetensors", Path(tmp) / "fusion_bench.safetensors"
        pm_cmd = [sys.executable, "-m", "pactmerge", "merge", "--pretrained", str(pre_path), "--finetuned",
                  *map(str, paths), "--method", "tsvm", "--svd", "exact", "--alpha", "1", "--device", "cpu",
                  "--out", str(ours)]
        spec = dict(pretrained=str(pre_path), finetuned=[str(p) for p in paths], out=str(theirs), alpha=1.0)
        fb_cmd = [args.peer_python, str(PEER_SCRIPT), json.dumps(spec)]
        times = {"pactmerge": [], "fusion_bench": []}  # whole process
        cpu = {"pactmerge": [], "fusion_bench": []}  # whole process, CPU seconds (user + system)
        inner = {"pactmerge": [], "fusion_bench": []}  # the merge alone, as each process timed it
        for _ in range(args.peer_repeats):  # alternate, so a change in machine load hits both
            for name, cmd in (("pactmerge", pm_cmd), ("fusion_bench", fb_cmd)):
                seconds, cpu_s, proc = _timed_run(cmd)
                if name == "fusion_bench" and proc.returncode == 3:  # found, but an import inside it failed
                    return {**row, "status": "skipped", "note": _peer_note(args.peer_python, proc.stderr.strip()[-160:])}
                if proc.returncode != 0:
                    return {**row, "status": f"error: {name}: {proc.stderr.strip()[-300:]}"}
                times[name].append(seconds)
                cpu[name].append(cpu_s)
                if name == "fusion_bench":
                    inner["fusion_bench"].append(json.loads(proc.stdout.strip().splitlines()[-1])["merge_s"])
                else:
                    inner["pactmerge"].append(json.loads(Path(str(ours) + ".json").read_text())["timings"]["load_and_merge_s"])
                print(f"  peer: {name} {seconds:.1f} s ({cpu_s:.1f} CPU s, load {os.getloadavg()[0]:.1f})",
                      file=sys.stderr, flush=True)
        pre = load_file(str(pre_path))
        tau_ours = {k: v.double() - pre[k].double() for k, v in load_file(str(ours)).items()}
        tau_theirs = {k: v.double() - pre[k].double() for k, v in load_file(str(theirs)).items()}
    pm_s, fb_s = min(times["pactmerge"]), min(times["fusion_bench"])
    return {**row, "pactmerge_s": pm_s, "fusion_bench_s": fb_s, "ratio": fb_s / pm_s,
            "pactmerge_cpu_s": min(cpu["pactmerge"]), "fusion_bench_cpu_s": min(cpu["fusion_bench"]),
            "cpu_ratio": min(cpu["fusion_bench"]) / min(cpu["pactmerge"]),
            "pactmerge_merge_s": min(inner["pactmerge"]), "fusion_bench_merge_s": min(inner["fusion_bench"]),
            "merge_ratio": min(inner["fusion_bench"]) / min(inner["pactmerge"]),
            "rel_err": rel_err(tau_ours, tau_theirs), "load": os.getloadavg()[0], "status": "ok"}


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
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run: ViT-B/32, T=4, 4 methods, 1 block, 4 streamed tasks")
    size.add_argument("--full", action="store_true", help="the whole sweep: both models, T=8 and 20, every method, "
                      "whole towers, 20 streamed tasks (hours on 2 CPU cores)")
    p.add_argument("--models", nargs="+", default=None, choices=sorted(_VIT_CONFIGS), help="default: ViT-B-32 (full: B/32, L/14)")
    p.add_argument("--tasks", nargs="+", type=int, default=None, help="numbers of tasks T (default 8; quick 4; full: 8 20)")
    p.add_argument("--methods", nargs="+", default=None, help="default: %s (full: every registered method)"
                   % " ".join(DEFAULT_METHODS))
    p.add_argument("--blocks", type=int, default=None, help="residual blocks in the per-method timings (default 1; "
                   "quick 1; -1 = all, the full default)")
    p.add_argument("--svd", nargs="+", default=["exact", "randomized"], choices=["exact", "randomized"])
    p.add_argument("--devices", nargs="+", default=None, choices=["cpu", "cuda"], help="default: cpu, and cuda when present")
    p.add_argument("--skip", nargs="*", default=[], metavar="MODEL/T", help="configurations to skip, e.g. ViT-L-14/20")
    p.add_argument("--storage-dtype", choices=["float32", "bfloat16"], default="float32", help="dtype of the synthetic checkpoints")
    p.add_argument("--build-device", choices=["cpu", "cuda"], default="cpu",
                   help="where the synthetic checkpoints are drawn (cuda: faster for ViT-L/14); they are kept on the CPU")
    p.add_argument("--rank", type=int, default=0, help="rank of the power-law part of each synthetic task update "
                   "(default 0: a quarter of min(m, n))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-speed", action="store_true", help="skip the per-method timings")
    p.add_argument("--no-baseline", action="store_true", help="skip the loop-of-SVDs TSV-M comparison")
    p.add_argument("--baseline-blocks", type=int, default=None, help="residual blocks in the comparison (default 1; full: all)")
    p.add_argument("--no-stream", action="store_true", help="skip the streaming memory measurement")
    p.add_argument("--stream-model", default="ViT-B-32", choices=sorted(_VIT_CONFIGS))
    p.add_argument("--stream-tasks", type=int, default=None, help="checkpoints streamed (default 8; quick 4; full 20)")
    p.add_argument("--stream-method", default="tsvm")
    p.add_argument("--stream-svd", default="randomized", choices=["exact", "randomized"])
    p.add_argument("--stream-dir", default=None, help="where the streamed and peer checkpoints are written (deleted after)")
    p.add_argument("--stream-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-peer", action="store_true", help="skip the fusion_bench comparison")
    p.add_argument("--peer-python", default=os.environ.get("PACTMERGE_PEER_PYTHON", sys.executable),
                   help="interpreter that has fusion_bench (default: $PACTMERGE_PEER_PYTHON, else this one)")
    p.add_argument("--peer-model", default="ViT-B-32", choices=sorted(_VIT_CONFIGS))
    p.add_argument("--peer-tasks", type=int, default=None, help="tasks in the peer comparison (default 8; quick 4)")
    p.add_argument("--peer-blocks", type=int, default=None, help="residual blocks in the peer comparison (default 1; the issue's figure: 4)")
    p.add_argument("--peer-repeats", type=int, default=1, help="runs of each side, alternating; the fastest counts")
    args = p.parse_args(argv)
    args.preset = "quick" if args.quick else "full" if args.full else "default"
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def _blocks_needed(args) -> int:
    """Residual blocks the synthetic checkpoints of the speed and baseline parts need (-1 = all)."""
    wanted = ([] if args.no_speed else [args.blocks]) + ([] if args.no_baseline else [args.baseline_blocks])
    return -1 if any(b < 0 for b in wanted) else max(wanted, default=0)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stream_child:
        stream_child(args.stream_child)
        return 0
    from pactmerge.merging import available_methods

    args.methods = args.methods or list(available_methods())
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if args.build_device == "cuda" and not torch.cuda.is_available():
        args.build_device = "cpu"
    dtype = getattr(torch, args.storage_dtype)
    started, load_before = time.perf_counter(), os.getloadavg()
    rows, results, baselines, timings = [], {}, [], {}
    for model in args.models if not (args.no_speed and args.no_baseline) else []:
        layout = first_blocks(vit_layout(model), _blocks_needed(args))
        for T in args.tasks:
            if f"{model}/{T}" in args.skip:
                continue
            t0 = time.perf_counter()
            print(f"{model} T={T}: building checkpoints", file=sys.stderr, flush=True)
            pre = synth_pretrained(layout, args.seed, dtype, args.build_device)
            fts = [synth_finetuned(pre, t, args.seed, args.rank, dtype, args.build_device) for t in range(T)]
            if not args.no_speed:
                bench_methods(args, model, T, first_blocks(pre, args.blocks), [first_blocks(f, args.blocks) for f in fts],
                              devices, rows, results)
            if not args.no_baseline:
                baselines.append(bench_baseline(args, model, T, pre, fts))
                print(f"  baseline: {baselines[-1]}", file=sys.stderr, flush=True)
            del pre, fts
            timings[f"{model}/T{T}"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stream = None if args.no_stream else bench_streaming(args)
    timings["streaming"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    peer = None if args.no_peer else bench_peer(args)
    timings["peer"] = time.perf_counter() - t0

    load_after = os.getloadavg()
    print(f"merge_speed ({args.preset} sizes): torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{os.cpu_count()} CPUs, load average (1 min) {load_before[0]:.1f} at start and {load_after[0]:.1f} at end "
          "(a shared machine: each table's load column is the 1-minute load when its row finished)"
          + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    if rows:
        print("\nseconds and peak memory above the inputs (host RSS on CPU, allocated on CUDA; blocks = residual "
              "blocks included, -1 = all):")
        print(format_table(rows, ["model", "T", "blocks", "method", "svd", "device", "seconds", "peak_mib",
                                  "rel_err_vs_exact", "load", "status"]))
    if baselines:
        print("\nexact TSV-M against a loop of full SVDs per matrix, CPU (blocks = residual blocks included, -1 = all):")
        print(format_table(baselines, ["model", "T", "blocks", "loop_s", "library_s", "speedup", "rel_err", "load"]))
    if stream:
        print("\nstreaming merge_files in a child process (MiB; ratio_max_rss = the child's peak RSS, import torch "
              "included, / one checkpoint; torch_import_mib = peak RSS of a process that only imports torch; "
              "ratio_above_torch = (peak - that) / one checkpoint):")
        print(format_table([stream], [k for k in stream if k != "status"] + ["status"]))
    if peer:
        print("\npeer: whole-process TSV-M, pactmerge merge vs fusion_bench compute_and_sum_svd_mem_reduction, same "
              "files, CPU (ratio = fusion_bench_s / pactmerge_s):")
        print(format_table([peer], ["model", "T", "blocks", "pactmerge_s", "fusion_bench_s", "ratio", "pactmerge_cpu_s",
                                    "fusion_bench_cpu_s", "cpu_ratio", "pactmerge_merge_s", "fusion_bench_merge_s",
                                    "merge_ratio", "rel_err", "load", "status"]))
        if peer.get("note"):
            print(f"  note: {peer['note']}")
    emit_json(dict(benchmark="merge_speed", preset=args.preset, total_s=time.perf_counter() - started,
                   threads=torch.get_num_threads(), loadavg_start=load_before[0], loadavg_end=load_after[0],
                   devices=devices, blocks=args.blocks, timings=timings,
                   results=results, baseline=baselines, streaming=stream, peer=peer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
