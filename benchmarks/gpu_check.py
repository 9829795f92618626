"""The GPU check: every GPU figure of pactmerge in one call, one table, one JSON last line.

Parts (each a child process with its own time limit, so one that breaks or hangs costs only
its own row; all together stay inside ``--budget-s``, default 450 s of device time):

- ``train``: fine-tuning throughput inside Lightning with the data path (``train_throughput.py
  --data cache``): ViT-B/32 at batch 128 and 256, ViT-B/16 at 128; bf16-mixed with and without
  torch.compile, and fp32; images/s and MFU;
- ``merge``: merge time on CUDA (``merge_speed.py``): ViT-B/32 8 tasks TSV-M, Iso-C, Iso-CTS,
  PACT+TSV-M, PACT+Iso-C, exact and randomized; ViT-L/14 20 tasks TSV-M and PACT+TSV-M;
- ``eval``: bf16 evaluation throughput of a merged ViT-B/32 (``eval_throughput.py``);
- ``study``: ``pactmerge run configs/smoke_vitb32.yaml`` start to finish, its wall time;
- ``tests``: ``pytest -m gpu``.

``--dry-run`` (or ``DRY=1``) runs every part on the CPU at tiny sizes (a tiny ViT, a few steps,
a generated tiny study config, the gpu tests of one file), so that a CPU test keeps this script
working. Sizes: ``--train-configs``, ``--train-steps``, ``--merge-configs``, ``--eval-images``,
``--study-config``, ``--pytest-paths``, ... Logs of every part go to ``--log-dir`` (one file
per part). See docs/gpu.md for running it on a machine without network.

    python benchmarks/gpu_check.py [--parts train merge eval study tests] [--log-dir DIR]
    DRY=1 python benchmarks/gpu_check.py
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from _common import emit_json, format_table  # noqa: E402

PARTS = ("train", "merge", "eval", "study", "tests")

# the issues' targets on one H100/H200 (None: no target); (part, item prefix) -> (op, value)
TARGETS = {
    ("train", "ViT-B-32 b128"): (">=", 5000.0),
    ("train", "ViT-B-32 b256"): (">=", 8000.0),
    ("train", "ViT-B-16 b128"): (">=", 3000.0),
    ("merge", "ViT-B-32 T8 pact+tsvm exact"): ("<=", 2.0),
    ("merge", "ViT-B-32 T8 pact+tsvm randomized"): ("<=", 1.0),
    ("merge", "ViT-L-14 T20"): ("<=", 20.0),
    ("study", "pactmerge run"): ("<=", 180.0),
}

GPU_DEFAULTS = dict(
    train_configs=["ViT-B-32:128", "ViT-B-32:256", "ViT-B-16:128"],
    train_variants=["bf16-compile", "bf16", "fp32"],
    train_steps=30, train_warmup=10, train_images=4096, train_source_size=64,
    merge_configs=["ViT-B-32:8:tsvm,iso_c,iso_cts,pact+tsvm,pact+iso_c", "ViT-L-14:20:tsvm,pact+tsvm"],
    merge_blocks=-1, eval_model="ViT-B-32", eval_images=8192, eval_tasks=8, eval_batch=512,
    study_config="configs/smoke_vitb32.yaml", pytest_paths=["tests"], device="cuda",
)
DRY_DEFAULTS = dict(
    train_configs=["tiny:8"], train_variants=["bf16", "fp32"], train_steps=2, train_warmup=1, train_images=48,
    train_source_size=16, merge_configs=["tiny:2:pact+tsvm"], merge_blocks=-1, eval_model="tiny",
    eval_images=32, eval_tasks=2, eval_batch=16, study_config=None,
    pytest_paths=["tests/benchmarks/test_gpu_check.py"], device="cpu",
)
# each part's share of the budget (the parts' limits); a part that finishes early leaves its rest to the next
SHARES = {"train": 0.45, "merge": 0.15, "eval": 0.07, "study": 0.23, "tests": 0.10}


@dataclass
class Step:
    """One child process of a part."""

    part: str
    label: str
    cmd: list[str]
    parse: str  # how to read its output: "json" (last stdout line) or "pytest"


@dataclass
class PartResult:
    part: str
    status: str = "ok"
    seconds: float = 0.0
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY", "") not in ("", "0"),
                   help="every part on the CPU at tiny sizes (also DRY=1)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--budget-s", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", 450)),
                   help="device seconds for all parts together (default 450; env GPU_CHECK_BUDGET_S)")
    p.add_argument("--log-dir", default=None, help="one log per part is written here (default: a temporary folder)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the parts")
    p.add_argument("--train-configs", nargs="+", metavar="MODEL:BATCH")
    p.add_argument("--train-variants", nargs="+", choices=["bf16-compile", "bf16", "fp32"])
    p.add_argument("--train-steps", type=int)
    p.add_argument("--train-warmup", type=int)
    p.add_argument("--train-images", type=int, help="images of the generated training set")
    p.add_argument("--train-source-size", type=int)
    p.add_argument("--merge-configs", nargs="+", metavar="MODEL:T:METHOD,METHOD")
    p.add_argument("--merge-blocks", type=int, help="residual blocks merged (-1: all)")
    p.add_argument("--eval-model")
    p.add_argument("--eval-images", type=int)
    p.add_argument("--eval-tasks", type=int)
    p.add_argument("--eval-batch", type=int)
    p.add_argument("--study-config", help="config of the real-architecture study (dry run: a generated tiny one)")
    p.add_argument("--study-set", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to `pactmerge run` as --set (repeatable), e.g. local data sources")
    p.add_argument("--pytest-paths", nargs="+")
    args = p.parse_args(argv)
    defaults = DRY_DEFAULTS if args.dry_run else GPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


# -- the steps of each part ----------------------------------------------------------------------------------


def train_steps(args) -> list[Step]:
    steps = []
    for config in args.train_configs:
        model, batch = config.split(":")
        cmd = [args.python, str(BENCH / "train_throughput.py"), "--device", args.device, "--models", model,
               "--batch-sizes", batch, "--variants", *args.train_variants, "--steps", str(args.train_steps),
               "--warmup", str(args.train_warmup), "--data", "cache", "--num-images", str(args.train_images),
               "--source-size", str(args.train_source_size)]
        if args.dry_run:
            cmd += ["--num-workers", "0"]
        steps.append(Step("train", f"{model} b{batch}", cmd, "json"))
    return steps


def merge_steps(args) -> list[Step]:
    steps = []
    for config in args.merge_configs:
        model, T, methods = config.split(":")
        cmd = [args.python, str(BENCH / "merge_speed.py"), "--models", model, "--tasks", T,
               "--methods", *methods.split(","), "--devices", args.device, "--blocks", str(args.merge_blocks),
               "--build-device", args.device, "--no-baseline", "--no-stream", "--no-peer"]
        steps.append(Step("merge", f"{model} T{T}", cmd, "json"))
    return steps


def eval_steps(args) -> list[Step]:
    cmd = [args.python, str(BENCH / "eval_throughput.py"), "--device", args.device, "--model", args.eval_model,
           "--tasks", str(args.eval_tasks), "--images", str(args.eval_images), "--batch-size", str(args.eval_batch),
           "--source-size", "16" if args.dry_run else "64"]
    if args.dry_run:
        cmd += ["--num-workers", "0", "--repeats", "1"]
    return [Step("eval", args.eval_model, cmd, "json")]


def tiny_study_config(directory: Path) -> Path:
    """A minimal study for the dry run: a tiny ViT, two offline tasks, a few steps, one merge."""
    import yaml

    model_cfg = directory / "tiny_vit_gpu_check.json"
    model_cfg.write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    cfg = {
        "output_dir": str(directory / "run"),
        "model": {"name": "tiny_vit_gpu_check", "config": str(model_cfg)},
        "tasks": {"names": ["digits", "faces"]},
        "data": {"eval_batch_size": 64, "max_train": 32, "max_eval": 16, "cache_dir": str(directory / "cache"),
                 "num_workers": 0},
        "recipe": {"lr": 0.001, "batch_size": 8, "warmup_steps": 1, "max_steps": 2, "ckpt_every_n_steps": 2,
                   "log_every_n_steps": 1},
        "comparisons": {"joint": False, "sequential": False},
        "merge": {"methods": ["task_arithmetic"], "pact": ["none"]},
    }
    path = directory / "gpu_check_study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def study_steps(args, work: Path) -> list[Step]:
    config = tiny_study_config(work) if args.dry_run else Path(args.study_config)
    cmd = [args.python, "-m", "pactmerge", "run", str(config), "--output-dir", str(work / "study-run")]
    for item in args.study_set:
        cmd += ["--set", item]
    return [Step("study", "pactmerge run", cmd, "wall")]


def tests_steps(args) -> list[Step]:
    cmd = [args.python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *args.pytest_paths]
    return [Step("tests", "pytest -m gpu", cmd, "pytest")]


# -- running and reading ---------------------------------------------------------------------------------------


def _last_json(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def rows_of(step: Step, stdout: str, seconds: float) -> list[dict]:
    """Table rows (part, item, value, unit, mfu) from a finished step's output."""
    if step.parse == "wall":
        return [dict(part=step.part, item=step.label, value=round(seconds, 1), unit="s wall")]
    if step.parse == "pytest":
        summary = next((line for line in reversed(stdout.strip().splitlines()) if " in " in line), "")
        return [dict(part=step.part, item=step.label, value=summary.strip("= "), unit="")]
    data = _last_json(stdout)
    if data.get("benchmark") == "train_throughput":
        return [dict(part="train", item=f"{r['model']} b{r['batch']} {r['variant']}", value=r["images_per_s"],
                     unit="img/s", mfu=r.get("mfu")) for r in data["results"]]
    if data.get("benchmark") == "merge_speed":
        out = []
        for key, r in data["results"].items():
            model, T, method, svd, device = key.split("/")
            out.append(dict(part="merge", item=f"{model} {T} {method} {svd}", value=round(r["seconds"], 3),
                            unit=f"s ({device})"))
        return out
    if data.get("benchmark") == "eval_throughput":
        r = data["result"]
        return [dict(part="eval", item=f"{r['model']} merged {r['method']} T{r['tasks']} b{r['batch']}",
                     value=r["images_per_s"], unit="img/s", mfu=r.get("mfu"))]
    raise ValueError(f"unexpected output of {step.label}")


def judge(row: dict, dry_run: bool) -> None:
    """Fill ``target`` and ``met`` from TARGETS (dry runs show the target, never judge it)."""
    for (part, prefix), (op, value) in TARGETS.items():
        if row["part"] == part and row["item"].startswith(prefix):
            row["target"] = f"{op} {value:g}"
            if not dry_run and isinstance(row.get("value"), (int, float)):
                row["met"] = "yes" if (row["value"] >= value if op == ">=" else row["value"] <= value) else "no"
            return


def run_step(step: Step, limit_s: float, log) -> tuple[str, float, str]:
    """(status, seconds, stdout) of one child process run under ``limit_s``."""
    log.write(f"\n===== {step.part}: {step.label}: {shlex.join(step.cmd)}\n")
    log.flush()
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    try:
        proc = subprocess.run(step.cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(limit_s, 1), env=env)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        log.write(out + err)
        return f"timeout after {limit_s:.0f} s", time.perf_counter() - t0, out
    seconds = time.perf_counter() - t0
    log.write(proc.stdout + proc.stderr)
    log.flush()
    if step.parse == "pytest":
        # 0: passed; 5: no test selected (no gpu test in the paths); 1: failures
        return ({0: "ok", 5: "ok (no gpu tests)"}.get(proc.returncode, f"failed (exit {proc.returncode})"),
                seconds, proc.stdout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
        return f"failed (exit {proc.returncode}: {tail})", seconds, proc.stdout
    return "ok", seconds, proc.stdout


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="pactmerge-gpu-check-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    import torch

    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name() if cuda else "no CUDA device"
    if not args.dry_run and not cuda:
        print("gpu_check: no CUDA device here; run with --dry-run (or DRY=1) to check the script on the CPU",
              file=sys.stderr)
        return 2
    results: list[PartResult] = []
    with tempfile.TemporaryDirectory(prefix="pactmerge-gpu-check-") as tmp:
        work = Path(tmp)
        for part in args.parts:
            result = PartResult(part)
            results.append(result)
            if part == "study" and not args.dry_run and not (ROOT / args.study_config).is_file() \
                    and not Path(args.study_config).is_file():
                result.status = f"skipped: {args.study_config} not found"
                continue
            steps = {"train": lambda: train_steps(args), "merge": lambda: merge_steps(args),
                     "eval": lambda: eval_steps(args), "study": lambda: study_steps(args, work),
                     "tests": lambda: tests_steps(args)}[part]()
            # this part's share of the budget, plus whatever earlier parts left unused
            used = time.perf_counter() - started
            shares_left = sum(SHARES[p] for p in args.parts[args.parts.index(part):])
            part_budget = (args.budget_s - used) * SHARES[part] / shares_left
            part_start = time.perf_counter()
            with open(log_dir / f"{part}.log", "a") as log:
                for i, step in enumerate(steps):
                    left = part_budget - (time.perf_counter() - part_start)
                    limit = left / (len(steps) - i) if left > 0 else 0
                    if limit < 5:
                        result.notes.append(f"{step.label}: not run, the budget is spent")
                        result.status = "incomplete"
                        continue
                    status, seconds, stdout = run_step(step, limit, log)
                    if status.startswith("ok"):
                        try:
                            result.rows += rows_of(step, stdout, seconds)
                        except (ValueError, KeyError) as exc:
                            status = f"unreadable output ({exc})"
                    if not status.startswith("ok"):
                        result.rows.append(dict(part=part, item=step.label, value=None, unit="", status=status))
                        result.status = "failed"
                    elif status != "ok":
                        result.notes.append(f"{step.label}: {status}")
            result.seconds = time.perf_counter() - part_start
    rows = [r for res in results for r in res.rows]
    for r in rows:
        r.setdefault("status", "ok")
        judge(r, args.dry_run)
        if r.get("mfu") is not None:
            r["mfu_pct"] = round(100 * r["mfu"], 1)
    total = time.perf_counter() - started

    mode = "dry run on the CPU (tiny sizes; the figures mean nothing)" if args.dry_run else device_name
    print(f"pactmerge GPU check: {mode}; torch {torch.__version__}; {total:.0f} s of a {args.budget_s:.0f} s budget; "
          f"logs in {log_dir}")
    print(format_table(rows, ["part", "item", "value", "unit", "mfu_pct", "target", "met", "status"]))
    for res in results:
        line = f"  {res.part}: {res.status}, {res.seconds:.0f} s"
        print(line + (f" ({'; '.join(res.notes)})" if res.notes else ""))
    emit_json(dict(benchmark="gpu_check", dry_run=args.dry_run, device=device_name, torch=torch.__version__,
                   budget_s=args.budget_s, total_s=round(total, 1), log_dir=str(log_dir),
                   parts={res.part: dict(status=res.status, seconds=round(res.seconds, 1), notes=res.notes)
                          for res in results},
                   rows=rows))
    return 0 if all(res.status == "ok" or res.status.startswith("skipped") for res in results) else 1


if __name__ == "__main__":
    sys.exit(main())
