"""The report's intervals and plots, on a run directory written through the real CheckpointStore
with per-example predictions in the agreed format (RUN_DIR/predictions/<entry>.npz)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pactmerge.checkpoints import CheckpointStore
from pactmerge.pipeline.evaluate import save_predictions
from pactmerge.pipeline.report import plain_of, write_report

TASKS = {"a": (120, 5), "b": (80, 3)}  # examples, classes
# entry -> probability of a right answer per example (each example's "difficulty" is shared, so
# models are correlated as real ones are)
MODELS = {"pretrained": 0.3, "finetuned/a": 0.9, "finetuned/b": 0.85, "joint": 0.8, "sequential": 0.6,
          "merged/ties": 0.6, "merged/pact+ties": 0.7, "merged/tsvm": 0.65, "merged/pact+tsvm": 0.65,
          "merged/pact+tsvm-rsvd": 0.66}
ALPHA = {"merged/ties": ([0.2, 0.4, 0.6, 0.8, 1.0], [0.2, 1.0], False, False, 0.6),
         "merged/pact+ties": ([0.2, 0.4, 0.6, 0.8, 1.0], [0.2, 1.6], True, False, 1.4),
         "merged/tsvm": ([0.5, 1.0, 1.5, 2.0], [0.5, 2.0], False, False, 1.0),
         "merged/pact+tsvm": ([0.5, 1.0, 1.5, 2.0], [0.5, 4.0], True, True, 4.0)}


def _predictions(entry: str, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for t, (n, classes) in TASKS.items():
        labels = np.arange(n, dtype=np.int16) % classes
        difficulty = np.random.default_rng([7, n]).random(n)
        noise = np.random.default_rng([seed, len(entry), sum(map(ord, entry)), n]).random(n) * 0.2
        right = difficulty + noise < MODELS[entry] + 0.1
        if entry == "merged/pact+tsvm":  # identical predictions to tsvm: gain exactly 0
            right = difficulty + np.random.default_rng([seed, 11, sum(map(ord, "merged/tsvm")), n]).random(n) * 0.2 \
                < MODELS["merged/tsvm"] + 0.1
        out[t] = (np.where(right, labels, (labels + 1) % classes).astype(np.int16), labels)
    return out


def _alpha_search(entry: str) -> dict:
    grid, rng_, widened, at_limit, chosen = ALPHA[entry]
    lo, hi = rng_
    xs = np.round(np.arange(lo, hi + 1e-9, 0.2), 2)
    curve = {str(float(a)): float(0.5 + 0.3 * np.exp(-((a - chosen) ** 2))) for a in xs}
    curve[str(float(chosen))] = 0.8
    return {"grid": grid, "range": [lo, hi], "widened": widened, "at_limit": at_limit, "curve": curve,
            "chosen": chosen, "hard_bounds": [0.0, 4.0], "evaluations": len(curve)}


def make_run(root: Path, *, predictions: bool = True, seed: int = 0) -> Path:
    store = CheckpointStore(root)
    for entry in MODELS:
        preds = _predictions(entry, seed)
        accs = {t: float(np.mean(p == lab)) for t, (p, lab) in preds.items()}
        if entry.startswith("finetuned/"):
            accs = {entry.split("/")[1]: accs[entry.split("/")[1]]}
        meta = {"metrics": {"test": accs}}
        if entry.startswith("merged/"):
            meta.update(method=entry.split("/")[1].removesuffix("-rsvd"), alpha=0.5)
            if entry in ALPHA:
                meta["alpha_search"] = _alpha_search(entry)
                meta["alpha"] = meta["alpha_search"]["chosen"]
        store.save_state(entry, {"w": torch.zeros(1)}, meta)
        if predictions:
            save_predictions(root, entry, preds)
    return root


def test_plain_of():
    names = {"ties", "pact+ties", "tsvm-rsvd", "pact+tsvm-rsvd", "iso_c", "pact+iso_c-rsvd", "pact+dare"}
    assert plain_of("pact+ties", names) == "ties"
    assert plain_of("pact+tsvm-rsvd", names) == "tsvm-rsvd"
    assert plain_of("pact+iso_c-rsvd", names) == "iso_c"
    assert plain_of("pact+dare", names) is None
    assert plain_of("ties", names) is None


def test_intervals_and_paired_gains_in_every_output(tmp_path):
    run = make_run(tmp_path / "run")
    paths = write_report(run, list(TASKS), resamples=400)
    results = json.loads(paths["json"].read_text())
    rows = {r["name"]: r for r in results["rows"]}
    assert results["uncertainty"]["resamples"] == 400 and "without_predictions" not in results["uncertainty"]
    for r in rows.values():  # every row, trained and merged, the individual one from finetuned/<t>
        lo, hi = r["avg_ci95"]
        assert lo <= r["avg_absolute"] <= hi and hi - lo > 0.01, r["name"]
        for t in TASKS:
            assert r["accuracy_ci95"][t][0] <= r["accuracy"][t] <= r["accuracy_ci95"][t][1]
    g = rows["pact+ties"]["gain_vs_plain"]
    assert g["plain"] == "ties"
    assert g["mean"] == pytest.approx(rows["pact+ties"]["avg_absolute"] - rows["ties"]["avg_absolute"])
    assert g["ci95"][0] <= g["mean"] <= g["ci95"][1]
    # paired: the gain's interval is narrower than the sum of the two rows' half-widths
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(g["ci95"]) < (width(rows["pact+ties"]["avg_ci95"]) + width(rows["ties"]["avg_ci95"])) / 2
    assert rows["pact+tsvm"]["gain_vs_plain"] == {"plain": "tsvm", "mean": 0.0, "ci95": [0.0, 0.0]}
    assert rows["pact+tsvm-rsvd"]["gain_vs_plain"]["plain"] == "tsvm"
    assert "gain_vs_plain" not in rows["ties"] and "gain_vs_plain" not in rows["joint"]

    md = paths["md"].read_text()
    half = 50 * (rows["joint"]["avg_ci95"][1] - rows["joint"]["avg_ci95"][0])
    assert f"| {100 * rows['joint']['avg_absolute']:.1f} ± {half:.1f} |" in md
    assert f"{100 * g['mean']:+.1f} [{100 * g['ci95'][0]:+.1f}, {100 * g['ci95'][1]:+.1f}]" in md
    assert "+0.0 [+0.0, +0.0]" in md and "400 bootstrap resamples" in md

    table = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    by_name = {r["model"]: r for r in table}
    assert float(by_name["pact+ties"]["gain_vs_plain"]) == pytest.approx(g["mean"])
    assert float(by_name["pact+ties"]["gain_ci95_lo"]) == pytest.approx(g["ci95"][0])
    assert float(by_name["joint"]["avg_ci95_hi"]) == pytest.approx(rows["joint"]["avg_ci95"][1])
    assert by_name["ties"]["gain_vs_plain"] == ""
    assert (run / "plots" / "per_task_accuracy.png").is_file()


def test_report_is_deterministic_and_the_seed_changes_the_draws(tmp_path):
    run = make_run(tmp_path / "run")
    first = json.loads(write_report(run, list(TASKS), resamples=200)["json"].read_text())["rows"]
    again = json.loads(write_report(run, list(TASKS), resamples=200)["json"].read_text())["rows"]
    other = json.loads(write_report(run, list(TASKS), resamples=200, seed=1)["json"].read_text())["rows"]
    assert [r["avg_ci95"] for r in first] == [r["avg_ci95"] for r in again]
    assert [r["avg_ci95"] for r in first] != [r["avg_ci95"] for r in other]


def test_a_run_without_predictions_gets_no_interval_and_a_note(tmp_path):
    run = make_run(tmp_path / "run", predictions=False)
    save_predictions(run, "joint", {"a": _predictions("joint")["a"]})  # one task of two: no interval either
    paths = write_report(run, list(TASKS), resamples=50)
    results = json.loads(paths["json"].read_text())
    assert all("avg_ci95" not in r and "gain_vs_plain" not in r for r in results["rows"])
    unc = results["uncertainty"]
    assert "joint" in unc["without_predictions"] and "pact+ties" in unc["without_gain"]
    md = paths["md"].read_text()
    assert "Note: no interval for" in md and "`pactmerge evaluate CONFIG` adds them" in md
    assert " ± " not in md.split("\n\n")[0]  # the table itself: bare values
    assert (run / "plots" / "per_task_accuracy.png").is_file() and (run / "plots" / "alpha_curves.png").is_file()


def test_alpha_curves_one_panel_per_method(tmp_path):
    from pactmerge.pipeline.plots import alpha_curves_figure

    run = make_run(tmp_path / "run", predictions=False)
    rows = json.loads(write_report(run, list(TASKS), resamples=10)["json"].read_text())["rows"]
    fig = alpha_curves_figure([r for r in rows if r.get("alpha_search")])
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert [ax.get_title() for ax in panels] == ["ties", "tsvm"]
    ties = panels[0]
    solid, dashed = ties.get_lines()[0], ties.get_lines()[2]  # series, chosen-α star, series, star
    assert solid.get_linestyle() == "-" and dashed.get_linestyle() == "--"
    assert ties.get_lines()[3].get_marker() == "*" and ties.get_lines()[3].get_xdata()[0] == 1.4
    assert len(ties.patches) == 1  # pact+ties widened 1.0 -> 1.6: one shaded span
    span = ties.patches[0]
    assert (span.get_x(), span.get_x() + span.get_width()) == pytest.approx((1.0, 1.6))
    assert any("at limit" in t.get_text() for t in panels[1].get_legend().get_texts())
    assert (run / "plots" / "alpha_curves.png").stat().st_size > 10_000


def test_report_over_seed_replicates_is_the_mean_and_std_of_the_replicates(tmp_path):
    top = tmp_path / "replicates"
    for s in (0, 1, 2):
        make_run(top / f"seed-{s}", seed=s)
    paths = write_report(top, resamples=200)  # no store of its own: the report over seeds
    results = json.loads(paths["json"].read_text())
    assert results["seeds"] == [0, 1, 2] and results["uncertainty"]["of"] == "the mean over seed replicates"
    per_seed = [{r["name"]: r for r in json.loads((top / f"seed-{s}" / "results.json").read_text())["rows"]}
                for s in (0, 1, 2)]
    for row in results["rows"]:
        vals = [p[row["name"]]["avg_absolute"] for p in per_seed]
        assert row["avg_seeds"]["n"] == 3
        assert row["avg_seeds"]["mean"] == pytest.approx(np.mean(vals))
        assert row["avg_seeds"]["std"] == pytest.approx(np.std(vals, ddof=1))
        assert row["avg_absolute"] == pytest.approx(np.mean(vals))
        for t in TASKS:
            assert row["accuracy"][t] == pytest.approx(np.mean([p[row["name"]]["accuracy"][t] for p in per_seed]))
        lo, hi = row["avg_ci95"]
        assert lo <= row["avg_absolute"] <= hi
    rows = {r["name"]: r for r in results["rows"]}
    gains = [p["pact+ties"]["avg_absolute"] - p["ties"]["avg_absolute"] for p in per_seed]
    assert rows["pact+ties"]["gain_seeds"]["mean"] == pytest.approx(np.mean(gains))
    assert rows["pact+ties"]["gain_seeds"]["std"] == pytest.approx(np.std(gains, ddof=1))
    assert rows["pact+ties"]["gain_vs_plain"]["mean"] == pytest.approx(np.mean(gains))
    # the seed mean averages out part of the test-example noise of single replicates: a narrower interval
    one = per_seed[0]["joint"]["avg_ci95"]
    assert rows["joint"]["avg_ci95"][1] - rows["joint"]["avg_ci95"][0] <= one[1] - one[0] + 1e-9
    md = paths["md"].read_text()
    sd = rows["joint"]["avg_seeds"]
    assert f"| {100 * sd['mean']:.1f} ± {100 * sd['std']:.1f} (n=3) |" in md and "seeds: mean ± std" in md
    table = {r["model"]: r for r in csv.DictReader(io.StringIO(paths["csv"].read_text()))}
    assert float(table["joint"]["seeds_std"]) == pytest.approx(sd["std"]) and table["joint"]["seeds_n"] == "3"


def test_predictions_of_another_split_leave_the_report_without_intervals(tmp_path):
    run = make_run(tmp_path / "run")
    preds = _predictions("joint")
    save_predictions(run, "joint", {t: (p[:-3], lab[:-3]) for t, (p, lab) in preds.items()})
    results = json.loads(write_report(run, list(TASKS), resamples=20)["json"].read_text())
    assert all("avg_ci95" not in r for r in results["rows"])
    assert "re-run the evaluation stage" in results["uncertainty"]["note"]


def test_row_colours_one_family_per_method_distinct_per_row():
    import matplotlib

    from pactmerge.pipeline.plots import row_colours

    names = ["ties", "pact+ties", "pact+ties-rsvd", "tsvm", "pact+tsvm"]
    rows = [{"name": "joint", "kind": "joint"}, *({"name": n, "kind": "merged"} for n in names)]
    colours = row_colours(rows)
    blues, oranges = matplotlib.colormaps["Blues"], matplotlib.colormaps["Oranges"]
    assert [colours[n] for n in names] == [blues(0.95), blues(0.7), blues(0.5), oranges(0.95), oranges(0.7)]
    assert len({tuple(matplotlib.colors.to_rgba(c)) for c in colours.values()}) == len(rows)
