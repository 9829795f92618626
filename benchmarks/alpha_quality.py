"""Quality of the study's α selection: the chosen α against a fine grid, on a finished run directory.

For every merge of ``RUN_DIR`` whose α was searched (``alpha_search.mode`` is not ``fixed``), the
merge is rebuilt from the stored fine-tunes exactly as the merge stage built it (same planned
parameters, ``task_ids`` and PACT cache), and its mean validation accuracy is evaluated on a
fine grid (``--step``, default 0.05) over the range its search ended with (``alpha_search.range``,
the widened range), through the study's own evaluation path (``ctx.accuracies``, same precision).
Whole-split scores the search already made (its ``confirmed`` points) are reused once the chosen
α scores the same again; every other point is evaluated on the whole validation splits. A merge passes when the chosen α's score is within ``--tolerance``
points (default 0.3) of the best score on the fine grid.

Prints one row per merge and, last, one JSON line:
``{"benchmark": "alpha_quality", "merges": N, "passed": N, "max_gap_points": x, "ok": bool, ...}``.

    python benchmarks/alpha_quality.py runs/offline-default [--step 0.05] [--tolerance 0.3] [--merges ID ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def fine_grid(lo: float, hi: float, step: float) -> list[float]:
    n = int(round((hi - lo) / step))
    return [round(lo + i * step, 6) for i in range(n + 1)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a finished study's run directory")
    p.add_argument("--step", type=float, default=0.05)
    p.add_argument("--tolerance", type=float, default=0.3, help="points (of 100) below the fine grid's best")
    p.add_argument("--merges", nargs="*", default=None, help="merge ids to check (default: every searched merge)")
    args = p.parse_args(argv)

    from pactmerge.merging import PACTCache
    from pactmerge.pipeline.context import open_run_dir
    from pactmerge.pipeline.merge_plan import plan_merges
    from pactmerge.pipeline.merge_stage import check_inputs, merge_planned

    t_start = time.perf_counter()
    ctx = open_run_dir(args.run_dir)
    m = ctx.cfg.merge
    inputs = check_inputs(ctx)
    cache = PACTCache()
    rows = []
    print(f"{'merge':<28} {'range':>11} {'chosen':>7} {'val %':>7} {'fine best':>9} {'val %':>7} "
          f"{'gap':>6} {'evals':>5} {'fine':>5}  ok")
    planned_by_id = {p.id: p for p in plan_merges(m)}
    for mid in (args.merges or list(planned_by_id)):  # in the order given
        planned, name = planned_by_id.get(mid), f"merged/{mid}"
        if planned is None or not ctx.store.has(name):
            print(f"{mid:<28} not a stored merge of this run", flush=True)
            continue
        search = ctx.store.entry(name).get("alpha_search") or {}
        if search.get("mode", "fixed") == "fixed" or "range" not in search:
            continue
        res = merge_planned(ctx, planned, inputs, cache)

        def score(alpha: float) -> float:
            accs = ctx.accuracies(res.apply(inputs.pretrained, alpha), split="val")
            return sum(accs.values()) / len(accs)

        # whole-split scores the study made: the confirmation's (or, without a first pass, the curve)
        known = search.get("confirmed") or (search["curve"] if not search.get("subset_per_task") else {})
        known = {round(float(a), 6): float(v) for a, v in known.items()}
        chosen = round(float(search["chosen"]), 6)
        chosen_val = score(chosen)
        reproduced = chosen_val == float(search.get("score", known.get(chosen, float("nan"))))
        fine = {chosen: chosen_val}
        for a in fine_grid(*search["range"], args.step):
            if a not in fine:
                fine[a] = known[a] if (reproduced and a in known) else score(a)
        best = max(sorted(fine), key=lambda a: (fine[a], -a))
        gap = 100 * (fine[best] - chosen_val)
        ok = gap <= args.tolerance + 1e-9
        rows.append({"merge": planned.id, "range": search["range"], "widened": search.get("widened"),
                     "at_limit": search.get("at_limit"), "chosen": chosen, "chosen_val": chosen_val,
                     "reproduced": reproduced, "fine_best": best, "fine_best_val": fine[best],
                     "gap_points": round(gap, 4), "search_evaluations": len(search["curve"]),
                     "confirmations": len(search.get("confirmed") or {}), "fine_points": len(fine),
                     "ok": ok})
        lo, hi = search["range"]
        print(f"{planned.id:<28} {f'{lo:g}-{hi:g}':>11} {chosen:>7.2f} {100 * chosen_val:>7.2f} {best:>9.2f} "
              f"{100 * fine[best]:>7.2f} {gap:>6.2f} {len(search['curve']):>5} {len(fine):>5}  {'yes' if ok else 'NO'}"
              + ("" if reproduced else "  (chosen α scored differently on re-evaluation)"), flush=True)
    passed = sum(r["ok"] for r in rows)
    summary = {"benchmark": "alpha_quality", "run_dir": str(args.run_dir), "step": args.step,
               "tolerance_points": args.tolerance, "merges": len(rows), "passed": passed,
               "max_gap_points": max((r["gap_points"] for r in rows), default=None),
               "all_reproduced": all(r["reproduced"] for r in rows), "ok": passed == len(rows),
               "mean_search_evaluations": (sum(r["search_evaluations"] for r in rows) / len(rows)) if rows else None,
               "seconds": round(time.perf_counter() - t_start, 1), "rows": rows}
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
