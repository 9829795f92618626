"""Replay α searches on a finished study: quality and cost of a search rule, without re-running the study.

Two steps:

1. ``--build``: for every searched merge of ``RUN_DIR`` (its ``alpha_search.mode`` is not
   ``fixed``), the merge is rebuilt as the merge stage built it and every validation example is
   classified at every ``--step`` (0.05) of the method's hard α bounds, through the study's own
   evaluation path. The predictions go to ``OUT/<merge>.npz`` (about 40 s per merge on the
   offline default, 2 cores).
2. Replay (always): ``pipeline.alpha.search_alpha`` (or the ``search_alpha`` of ``--alpha-module
   FILE``, e.g. an earlier version from git) runs on those predictions with the study's own first
   pass (the seeded ``ALPHA_SUBSET`` of each split, or ``--subset``), counting the images each
   evaluation would send through the encoder (a whole-split score of an α the subset has scored
   costs the subset's complement only, as ``ValidationScores`` does).

Per merge: the chosen α, its gap (points) to the grid's best over the range the search ended
with (``gap``, what ``alpha_quality.py`` checks) and over the whole hard range (``gap_hard``),
and the images. Last stdout line: one JSON object.

    python benchmarks/alpha_replay.py runs/offline-default --build --out /tmp/alpha-grid
    python benchmarks/alpha_replay.py runs/offline-default --out /tmp/alpha-grid [--alpha-module old_alpha.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
from alpha_quality import fine_grid


def build(run_dir: str, out: Path, step: float) -> None:
    from pactmerge.merging import PACTCache
    from pactmerge.pipeline.context import open_run_dir
    from pactmerge.pipeline.merge_plan import plan_merges
    from pactmerge.pipeline.merge_stage import alpha_setup, check_inputs, merge_planned

    ctx = open_run_dir(run_dir)
    inputs, cache = check_inputs(ctx), PACTCache()
    out.mkdir(parents=True, exist_ok=True)
    for planned in plan_merges(ctx.cfg.merge):
        res = merge_planned(ctx, planned, inputs, cache)
        setup = alpha_setup(ctx, planned.method, res.default_alpha)
        if setup["mode"] == "fixed":
            continue
        lo, hi = setup["bounds"]
        grid = fine_grid(lo, hi, step)
        t0, arrays = time.perf_counter(), {}
        for alpha in grid:
            for task, (pred, label) in ctx.predictions(res.apply(inputs.pretrained, alpha), split="val").items():
                arrays.setdefault(f"pred__{task}", []).append(pred.astype(np.int16))
                arrays[f"label__{task}"] = label.astype(np.int16)
        np.savez_compressed(out / f"{planned.id}.npz", alphas=np.array(grid), grid=np.array(setup["grid"]),
                            bounds=np.array([lo, hi]),
                            **{k: np.stack(v) if k.startswith("pred__") else v for k, v in arrays.items()})
        print(f"built {planned.id}: {len(grid)} points, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def load_search(path: str | None):
    if path is None:
        from pactmerge.pipeline.alpha import search_alpha

        return search_alpha
    spec = importlib.util.spec_from_file_location("replayed_alpha", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["replayed_alpha"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.search_alpha


def replay(path: Path, search_alpha, subset: int, seed: int) -> dict:
    d = np.load(path)
    tasks = [k.split("__", 1)[1] for k in d.files if k.startswith("pred__")]
    alphas = [round(float(a), 6) for a in d["alphas"]]
    at = {a: i for i, a in enumerate(alphas)}
    correct = {t: d[f"pred__{t}"] == d[f"label__{t}"][None, :] for t in tasks}
    from pactmerge.pipeline.evaluate import subset_positions

    in_sub = {}
    for t in tasks:  # the study's first-pass subset of each split
        mask = np.zeros(correct[t].shape[1], bool)
        mask[subset_positions(len(mask), subset, seed)] = True
        in_sub[t] = mask
    n_sub = int(sum(m.sum() for m in in_sub.values()))
    n_all = int(sum(c.shape[1] for c in correct.values()))
    cost = {"images": 0, "evaluations": 0}
    seen_sub: set[float] = set()
    seen_full: set[float] = set()

    def full_score(a: float) -> float:
        return float(np.mean([correct[t][at[round(a, 6)]].mean() for t in tasks]))

    def first_pass(a: float) -> float:
        a = round(a, 6)
        if a not in seen_sub:
            seen_sub.add(a)
            cost["images"] += n_sub
            cost["evaluations"] += 1
        return float(np.mean([correct[t][at[a]][in_sub[t]].mean() for t in tasks]))

    def score(a: float) -> float:
        a = round(a, 6)
        if a not in seen_full:
            seen_full.add(a)
            cost["evaluations"] += 1
            cost["images"] += n_all - n_sub if a in seen_sub else n_all
            seen_sub.add(a)
        return full_score(a)

    lo_b, hi_b = (float(x) for x in d["bounds"])
    s = search_alpha(score, [float(x) for x in d["grid"]], "coarse_to_fine", bounds=(lo_b, hi_b),
                     first_pass=first_pass if n_all > n_sub else None)
    lo, hi = s.range
    best_range = max(full_score(a) for a in alphas if lo - 1e-9 <= a <= hi + 1e-9)
    best_hard = max(full_score(a) for a in alphas)
    chosen = full_score(s.chosen)
    return {"merge": path.stem, "range": [lo, hi], "chosen": s.chosen, "gap": 100 * (best_range - chosen),
            "gap_hard": 100 * (best_hard - chosen), **cost}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a finished study's run directory")
    p.add_argument("--out", required=True, help="directory of the per-merge prediction grids")
    p.add_argument("--build", action="store_true", help="evaluate the grids first (slow)")
    p.add_argument("--step", type=float, default=0.05)
    p.add_argument("--alpha-module", default=None, help="a file defining search_alpha (default: pactmerge's)")
    p.add_argument("--subset", type=int, default=None, help="first-pass examples per task (default: ALPHA_SUBSET)")
    p.add_argument("--tolerance", type=float, default=0.3, help="points below the grid's best that still pass")
    args = p.parse_args(argv)
    from pactmerge.pipeline.merge_stage import ALPHA_SUBSET

    out = Path(args.out)
    if args.build:
        build(args.run_dir, out, args.step)
    files = sorted(out.glob("*.npz"))
    if not files:
        print(f"{out}: no prediction grids; run with --build first", file=sys.stderr)
        return 2
    seed = int(json.loads((Path(args.run_dir) / "run.json").read_text())["config"].get("seed", 0))
    search = load_search(args.alpha_module)
    rows = [replay(f, search, args.subset or ALPHA_SUBSET, seed) for f in files]
    print(f"{'merge':<28} {'range':>11} {'chosen':>6} {'gap':>5} {'gap_hard':>8} {'evals':>5} {'images':>7}")
    for r in rows:
        print(f"{r['merge']:<28} {r['range'][0]:>5g}-{r['range'][1]:<5g} {r['chosen']:>6.2f} {r['gap']:>5.2f} "
              f"{r['gap_hard']:>8.2f} {r['evaluations']:>5} {r['images']:>7}")
    tol = args.tolerance + 1e-9
    summary = {"benchmark": "alpha_replay", "run_dir": args.run_dir, "alpha_module": args.alpha_module or "pactmerge",
               "subset_per_task": args.subset or ALPHA_SUBSET, "merges": len(rows),
               "over_tolerance": sum(r["gap"] > tol for r in rows),
               "over_tolerance_hard_range": sum(r["gap_hard"] > tol for r in rows),
               "max_gap_points": max(r["gap"] for r in rows), "max_gap_hard_points": max(r["gap_hard"] for r in rows),
               "images": sum(r["images"] for r in rows), "evaluations": sum(r["evaluations"] for r in rows)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
