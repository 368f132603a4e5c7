"""Curves, bootstrap, compute-to-target, plot and report on hand-made records."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.analysis.curves import (aggregate_curves, anytime_curves, compute_to_target,
                                   final_points, grid_bootstrap, sweep_best)
from bench.analysis.plots import plain_number, plot_run, plot_tradeoff
from bench.analysis.report import paired_differences, report_markdown, report_run
from bench.analysis.stats import mean_interval, wilcoxon_p
from bench.contract import schema as s
from bench.contract.errors import BenchError
from bench.records.rundir import compute_unit, default_reference
from bench.records.tables import write_json, write_table

PUBLISHED = Path(__file__).resolve().parents[1] / "bench" / "records" / "published_csv"  # shipped


def _row(**values) -> dict:
    row = dict.fromkeys(s.TRIAL_COLUMNS, np.nan)
    row.update({s.SUITE: "test", s.TASK: "t", s.METHOD: "grid", s.SEED: 0, s.STATUS: s.OK})
    row.update(values)
    return row


def search(tid, resource, val_nll, ended, status=s.OK, **kw) -> dict:
    return _row(**{s.TRIAL_ID: tid, s.KIND: s.SEARCH, s.RESOURCE_S: resource,
                   s.VAL_NLL: val_nll, s.ENDED_S: ended, s.STATUS: status}, **kw)


def retrain(of, resource, acc, ended=1000.0, status=s.OK, **kw) -> dict:
    return _row(**{s.TRIAL_ID: f"r{of}", s.KIND: s.RETRAIN, s.RETRAIN_OF: of,
                   s.RESOURCE_S: resource, s.TEST_ACC: acc, s.TEST_NLL: 1 - acc,
                   s.ENDED_S: ended, s.STATUS: status}, **kw)


def learned(tid, resource, objective, acc, ended, status=s.OK, **kw) -> dict:
    kw.setdefault(s.METHOD, "learned")
    return _row(**{s.TRIAL_ID: tid, s.KIND: s.LEARNED, s.RESOURCE_S: resource,
                   s.OBJECTIVE: objective, s.TEST_ACC: acc, s.TEST_NLL: 1 - acc,
                   s.ENDED_S: ended, s.STATUS: status}, **kw)


def table(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(s.TRIAL_COLUMNS))


def points(curve: pd.DataFrame) -> list[tuple]:
    return [(int(k), pytest.approx(c), pytest.approx(a))
            for k, c, a in curve[[s.K, s.COMPUTE_S, s.TEST_ACC]].itertuples(index=False)]


def three_trials(**kw) -> list[dict]:
    """Trials 1, 2, 3 (resource 10, 20, 30; val_nll 2.0, 1.0, 1.5), table order shuffled."""
    return [search(3, 30, 1.5, ended=3.0, **kw), search(1, 10, 2.0, ended=1.0, **kw),
            search(2, 20, 1.0, ended=2.0, **kw)]


def test_search_incumbent_switches_and_retrain_is_charged():
    trials = table(*three_trials(), retrain(1, 5, 0.6), retrain(2, 7, 0.8))
    curve = anytime_curves(trials)
    assert points(curve) == [(1, 15, 0.6), (2, 37, 0.8), (3, 67, 0.8)]
    assert curve[s.TRIAL_ID].tolist() == [1, 2, 2]
    assert curve[s.TEST_NLL].tolist() == pytest.approx([0.4, 0.2, 0.2])


def test_failed_pruned_over_budget_cost_compute_but_never_lead():
    trials = table(
        search("a", 10, 0.1, ended=1.0, status=s.FAILED),
        search("b", 20, 1.0, ended=2.0),
        search("c", 3, 0.5, ended=3.0, status=s.PRUNED),
        search("d", 4, 0.2, ended=4.0, status=s.OVER_BUDGET),
        search("e", 1, 0.3, ended=5.0),  # new incumbent whose retrain failed: no point
        retrain("a", 100, 0.99), retrain("b", 5, 0.7), retrain("e", 2, 0.9, status=s.FAILED))
    assert points(anytime_curves(trials)) == [(2, 35, 0.7), (3, 38, 0.7), (4, 42, 0.7)]


def test_learned_curve_follows_own_objective():
    trials = table(learned("x", 10, 3.0, 0.5, ended=1.0),
                   learned("y", 20, 1.0, 0.9, ended=2.0, status=s.FAILED),
                   learned("z", 30, 2.0, 0.7, ended=3.0),
                   learned("w", 40, 2.5, 0.95, ended=4.0))
    curve = anytime_curves(trials)
    assert points(curve) == [(1, 10, 0.5), (2, 30, 0.5), (3, 60, 0.7), (4, 100, 0.7)]
    assert curve[s.TRIAL_ID].tolist() == ["x", "x", "z", "z"]


def test_curves_are_per_task_method_seed_and_ids_survive_float_roundtrip():
    trials = table(*three_trials(seed=0), retrain(2.0, 7, 0.8, seed=0),
                   search(1, 10, 1.0, ended=1.0, seed=1), retrain(1.0, 4, 0.5, seed=1),
                   search(1, 10, 1.0, ended=1.0, task="u"), retrain(1, 1, 0.3, task="u"))
    curve = anytime_curves(trials)
    got = {(t, sd): points(g) for (t, sd), g in curve.groupby([s.TASK, s.SEED])}
    assert got == {("t", 0): [(2, 37, 0.8), (3, 67, 0.8)], ("t", 1): [(1, 14, 0.5)],
                   ("u", 0): [(1, 11, 0.3)]}


def test_bad_input_raises_bench_error():
    with pytest.raises(BenchError, match="empty"):
        anytime_curves(table())
    with pytest.raises(BenchError, match=s.RESOURCE_S):
        anytime_curves(table(*three_trials()).drop(columns=[s.RESOURCE_S]))
    with pytest.raises(BenchError, match="no runs"):
        grid_bootstrap(table(*three_trials()), method="nope")


def curve_rows(method, seed, *pts, task="t") -> list[dict]:
    return [{s.TASK: task, s.METHOD: method, s.SEED: seed, s.K: k, s.COMPUTE_S: c,
             s.TEST_ACC: a, s.TEST_NLL: 1 - a, s.TRIAL_ID: k} for k, (c, a) in enumerate(pts, 1)]


def late_seed_curves() -> pd.DataFrame:
    """Seed 1 has its first point at compute 20, after seed 0's at 10."""
    return pd.DataFrame(curve_rows("m", 0, (10, 0.5), (100, 0.7))
                        + curve_rows("m", 1, (20, 0.6), (1000, 0.8)))


def test_mean_starts_where_every_seed_has_a_point():
    agg = aggregate_curves(late_seed_curves(), band="minmax")
    assert agg[s.COMPUTE_S].tolist() == [10, 20, 100, 1000]  # every breakpoint, exactly
    assert agg["complete"].tolist() == [False, True, True, True]
    assert agg["seeds"].tolist() == [1, 2, 2, 2]
    # before 20 the "mean" is seed 0 alone; from 20 on, over both seeds
    assert agg["mean"].tolist() == pytest.approx([0.5, 0.55, 0.65, 0.75])
    assert np.isnan(agg["low"].iloc[0]) and np.isnan(agg["high"].iloc[0])  # no band there
    assert agg["low"].tolist()[1:] == pytest.approx([0.5, 0.6, 0.7])
    assert agg["high"].tolist()[1:] == pytest.approx([0.6, 0.7, 0.8])


def test_ci_band_is_a_bootstrap_interval_of_the_mean():
    # two seeds: resampled means are a, (a+b)/2 or b, a and b each with probability 1/4,
    # so the 2.5% and 97.5% percentiles are exactly the two seeds
    agg = aggregate_curves(late_seed_curves(), band="ci")
    assert agg["low"].tolist()[1:] == pytest.approx([0.5, 0.6, 0.7])
    assert agg["high"].tolist()[1:] == pytest.approx([0.6, 0.7, 0.8])
    five = pd.DataFrame(sum((curve_rows("m", i, (10, a)) for i, a in
                             enumerate([0.1, 0.2, 0.3, 0.4, 0.9])), []))
    row = aggregate_curves(five, band="ci").iloc[0]
    assert row["mean"] == pytest.approx(0.38)
    assert 0.1 < row["low"] < 0.38 < row["high"] < 0.9  # narrower than the seeds' range
    assert aggregate_curves(five, band="none")[["low", "high"]].isna().all().all()
    with pytest.raises(BenchError, match="band"):
        aggregate_curves(five, band="sd")


def test_step_value_is_latest_k_when_compute_is_not_monotone():
    # a new incumbent with a cheaper retrain makes k=2 cheaper than k=1
    curves = pd.DataFrame(curve_rows("m", 0, (110, 0.5), (25, 0.7), (130, 0.6)))
    agg = aggregate_curves(curves)
    assert agg[s.COMPUTE_S].tolist() == [25, 110, 130]
    assert agg["mean"].tolist() == pytest.approx([0.7, 0.7, 0.6])


def bootstrap_trials(seed=0) -> list[dict]:
    return [*three_trials(seed=seed), retrain(1, 5, 0.6, seed=seed),
            retrain(2, 7, 0.8, seed=seed), retrain(3, 9, 0.7, seed=seed)]


def test_grid_bootstrap_full_grid_and_subsets():
    trials = table(*bootstrap_trials())
    boot = grid_bootstrap(trials, draws=4000, by_seed=True)
    assert boot[s.K].tolist() == [1, 2, 3]
    full = boot.iloc[-1]
    assert (full[s.COMPUTE_S], full["mean"], full["low"], full["high"]) == (67, 0.8, 0.8, 0.8)
    assert full[s.COMPUTE_S] == pytest.approx(anytime_curves(trials)[s.COMPUTE_S].iloc[-1])
    # k=2: {1,2} -> (37, .8), {1,3} -> (49, .7) since trial 3 beats 1, {2,3} -> (57, .8)
    two = boot.iloc[1]
    assert two["mean"] == pytest.approx((0.8 + 0.7 + 0.8) / 3, abs=0.005)
    assert two[s.COMPUTE_S] == pytest.approx((37 + 49 + 57) / 3, abs=1.0)
    assert (two["low"], two["high"]) == (0.7, 0.8)
    one = boot.iloc[0]
    assert one[s.COMPUTE_S] == pytest.approx((15 + 27 + 39) / 3, abs=1.0)
    assert (one["low"], one["high"]) == (0.6, 0.8)
    assert boot["complete"].all()
    pd.testing.assert_frame_equal(boot, grid_bootstrap(trials, draws=4000, by_seed=True))


def test_grid_bootstrap_aggregates_seeds_and_flags_missing_retrains():
    rows = bootstrap_trials(seed=0) + [r for r in bootstrap_trials(seed=1)
                                       if r[s.RETRAIN_OF] != 2]  # seed 1: trial 2 not retrained
    boot = grid_bootstrap(table(*rows))
    seed1 = grid_bootstrap(table(*rows), by_seed=True).query(f"{s.SEED} == 1")
    assert seed1[s.K].tolist() == [1, 2] and not seed1["complete"].any()
    # seed 1 full grid over {1, 3}: 10 + 30 + retrain of 3 (9) = 49, acc 0.7
    assert seed1.iloc[-1][[s.COMPUTE_S, "mean"]].tolist() == [49, 0.7]
    k2 = boot[boot[s.K] == 2].iloc[0]
    assert k2["seeds"] == 2 and not k2["complete"]
    k3 = boot[boot[s.K] == 3].iloc[0]
    assert (k3["seeds"], k3[s.COMPUTE_S], k3["mean"]) == (1, 67, 0.8)


def target_curves() -> pd.DataFrame:
    return pd.DataFrame(
        curve_rows("grid", 0, (10, 0.70), (100, 0.80)) + curve_rows("grid", 1, (20, 0.72), (200, 0.84))
        # one early seed alone at 0.81 must not count as the mean reaching the target
        + curve_rows("fast", 0, (5, 0.81), (50, 0.84)) + curve_rows("fast", 1, (40, 0.79), (60, 0.85))
        + curve_rows("slow", 0, (10, 0.5)) + curve_rows("slow", 1, (10, 0.6)))


def test_compute_to_target_hand_computed():
    got = compute_to_target(target_curves()).set_index(s.METHOD)
    # target = (0.80 + 0.84) / 2 - 0.01 = 0.81
    assert got["target"].tolist() == pytest.approx([0.81] * 3)
    assert got.loc["grid", "final_acc"] == pytest.approx(0.82)
    assert got.loc["grid", "final_compute_s"] == pytest.approx(150)
    assert got.loc["grid", "compute_to_target_s"] == pytest.approx(200)
    assert got.loc["grid", "ratio_to_reference"] == pytest.approx(1.0)
    # fast: complete from 40 (mean 0.80), 0.815 at 50, 0.845 at 60
    assert got.loc["fast", "compute_to_target_s"] == pytest.approx(50)
    assert got.loc["fast", "ratio_to_reference"] == pytest.approx(0.25)
    assert got.loc["fast", "final_acc"] == pytest.approx(0.845)
    assert got.loc["fast", "final_compute_s"] == pytest.approx(55)
    assert math.isnan(got.loc["slow", "compute_to_target_s"])
    assert math.isnan(got.loc["slow", "ratio_to_reference"])
    assert got.loc["slow", "final_acc"] == pytest.approx(0.55)
    with pytest.raises(BenchError, match="reference"):
        compute_to_target(target_curves(), reference="bayes")


def test_falling_curve_has_no_compute_to_target():
    """A learned method whose mean rises above the target and falls below it again has not
    reached it; one that dips and recovers reaches it where it last comes back."""
    curves = pd.DataFrame(
        curve_rows("grid", 0, (10, 0.80)) + curve_rows("grid", 1, (10, 0.84))  # target 0.81
        + curve_rows("falls", 0, (10, 0.86), (30, 0.70)) + curve_rows("falls", 1, (10, 0.84), (30, 0.72))
        + curve_rows("dips", 0, (10, 0.85), (20, 0.75), (40, 0.83))
        + curve_rows("dips", 1, (10, 0.85), (20, 0.77), (40, 0.81)))
    got = compute_to_target(curves).set_index(s.METHOD)
    # falls: mean 0.85 at 10 (the old first-crossing rule said 10), 0.71 at 30, the end
    assert math.isnan(got.loc["falls", "compute_to_target_s"])
    assert got.loc["falls", "final_acc"] == pytest.approx(0.71)
    # dips: 0.85 at 10, 0.76 at 20, 0.82 from 40 to the end
    assert got.loc["dips", "compute_to_target_s"] == pytest.approx(40)
    assert got.loc["dips", "ratio_to_reference"] == pytest.approx(4.0)
    # every resample of dips' two seeds stays within from 40 on: an exact interval
    assert (got.loc["dips", "compute_to_target_low"], got.loc["dips", "compute_to_target_high"]) \
        == (pytest.approx(40), pytest.approx(40))


def test_compute_to_target_interval_over_seeds():
    # seed 0 stays within from 20, seed 1 from 50; resamples of one seed twice give 20 or 50
    curves = pd.DataFrame(
        curve_rows("grid", 0, (5, 0.91)) + curve_rows("grid", 1, (5, 0.91))  # target 0.90
        + curve_rows("m", 0, (10, 0.5), (20, 0.95)) + curve_rows("m", 1, (10, 0.5), (50, 0.92)))
    got = compute_to_target(curves).set_index(s.METHOD).loc["m"]
    assert got["compute_to_target_s"] == pytest.approx(50)  # mean 0.725 at 20, 0.935 at 50
    assert (got["compute_to_target_low"], got["compute_to_target_high"]) == (20, 50)
    never = pd.DataFrame(
        curve_rows("grid", 0, (5, 0.91)) + curve_rows("grid", 1, (5, 0.91))
        + curve_rows("m", 0, (10, 0.95)) + curve_rows("m", 1, (10, 0.80)))
    got = compute_to_target(never).set_index(s.METHOD).loc["m"]
    assert math.isnan(got["compute_to_target_s"])  # mean 0.875 ends below
    assert got["compute_to_target_high"] == math.inf  # seed 1 twice never gets there


def suite_trials() -> pd.DataFrame:
    """Two tasks x two seeds of the three-trial grid and a 3-run learned sweep (last failed)."""
    rows = []
    for task in ("digits", "cifar"):
        for seed in (0, 1):
            runs = bootstrap_trials(seed=seed) + [
                learned(f"l{i}", 12 * (i + 1), 2 - i / 2, 0.65 + 0.05 * i + 0.01 * seed,
                        ended=float(i), seed=seed) for i in range(3)]
            runs[-1][s.STATUS] = s.FAILED
            rows += [dict(r, **{s.TASK: task}) for r in runs]
    return table(*rows)


def test_plot_tradeoff_writes_png_and_svg(tmp_path):
    paths = plot_tradeoff(suite_trials(), tmp_path / "tradeoff")
    assert paths == [tmp_path / "tradeoff.png", tmp_path / "tradeoff.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in paths[1].read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tradeoff.png", "tradeoff.svg"]


def test_plot_options_and_bad_input(tmp_path):
    trials = suite_trials()
    paths = plot_tradeoff(trials, tmp_path / "f", methods=["grid"], band="minmax",
                          unit="CPU core-seconds", caps={"digits": 50.0})
    assert all(p.stat().st_size > 0 for p in paths)
    assert "CPU core-seconds" in paths[1].read_text()  # the unit is on the axis
    with pytest.raises(BenchError, match="no method 'nope'.*grid, learned"):
        plot_tradeoff(trials, tmp_path / "g", methods=["nope"])
    with pytest.raises(BenchError, match="band"):
        plot_tradeoff(trials, tmp_path / "g", band="sd")
    assert not list(tmp_path.glob("g*"))  # nothing written on bad input


def test_plot_and_report_before_any_scored_point(tmp_path):
    trials = table(search(1, 10, 1.0, ended=1.0, status=s.FAILED),
                   learned("x", 10, 1.0, 0.5, ended=1.0, status=s.FAILED))
    assert len(plot_tradeoff(trials, tmp_path / "f")) == 2
    assert "No method has a scored point yet." in report_markdown(trials)


def test_plain_tick_labels():
    assert [plain_number(x) for x in (0.5, 30, 300, 2000, 40000, 1.5e6)] == \
        ["0.5", "30", "300", "2k", "40k", "1.5M"]


def test_report_markdown_rows_intervals_and_paired_differences():
    report = report_markdown(suite_trials())
    for task in ("digits", "cifar"):
        assert f"## {task}" in report
    assert "Reference: grid." in report
    rows = lambda m: re.findall(rf"^\| {m} \|.*$", report, flags=re.M)  # noqa: E731
    assert len(rows("grid")) == len(rows("learned")) == 6  # accuracy, compute, per seed; x2
    # grid: 0.8 on both seeds (an exact interval); reference of itself
    assert rows("grid")[0] == "| grid | search | 2 | 80.00 [80.00, 80.00] | 0 (reference) | – | – | – |"
    # learned: picks run 1 (objective 1.5): 0.70 and 0.71; paired with grid: -0.10, -0.09;
    # two values: the percentile interval is exactly them; too few pairs for a p-value;
    # the sweep's best OK run is the same run (run 2 failed)
    assert rows("learned")[0] == ("| learned | learned | 2 | 70.50 [70.00, 71.00] | "
                                  "-9.50 [-10.00, -9.00] | 2 | – | 70.50 |")
    # grid stays at 0.8 >= 0.79 from compute 37 on (k=2) in both seeds; ok 12 = 2 x (3 + 3)
    assert rows("grid")[1] == "| grid | 67 | 37 [37, 37] | 1.000 | 12 | 0 | 0 | 0 |"
    # learned: 12 + 24 + 36 = 72, never within a point of 80%
    assert rows("learned")[1] == "| learned | 72 | – | – | 4 | 2 | 0 | 0 |"
    assert rows("learned")[2] == "| learned | 70.00 (-10.00) | 71.00 (-9.00) |"


def test_best_of_sweep_shows_a_bad_selection_rule():
    trials = suite_trials()
    # the method's objective now prefers run 0 (acc 0.65/0.66) over run 1 (0.70/0.71)
    trials.loc[(trials[s.METHOD] == "learned") & (trials[s.TRIAL_ID] == "l0"), s.OBJECTIVE] = 0.1
    best = sweep_best(trials)
    assert best.loc[("digits", "learned")].tolist() == pytest.approx([0.70, 0.71])
    row = re.findall(r"^\| learned \| learned \|.*$", report_markdown(trials), flags=re.M)[0]
    assert row.startswith("| learned | learned | 2 | 65.50 [65.00, 66.00] |")
    assert row.endswith("| 70.50 |")


def test_paired_differences_interval_and_wilcoxon():
    ref = [0.80, 0.70, 0.60, 0.90, 0.50, 0.65]
    diffs = [0.02, 0.01, 0.03, 0.04, 0.05, 0.06]
    curves = pd.DataFrame(sum((curve_rows("ref", i, (10, a)) + curve_rows("m", i, (10, a + d))
                               for i, (a, d) in enumerate(zip(ref, diffs))), []))
    got = paired_differences(final_points(curves).droplevel(s.TASK), "ref").loc["m"]
    assert got["pairs"] == 6 and got["mean"] == pytest.approx(0.035)
    assert 0.01 <= got["low"] < 0.035 < got["high"] <= 0.06
    assert got["p"] == pytest.approx(2 / 64)  # exact: all six differences positive
    two = paired_differences(final_points(curves[curves[s.SEED] < 2]).droplevel(s.TASK),
                             "ref").loc["m"]
    assert (two["pairs"], two["mean"]) == (2, pytest.approx(0.015))
    assert (two["low"], two["high"]) == (pytest.approx(0.01), pytest.approx(0.02))
    assert math.isnan(two["p"])  # fewer than 6 pairs
    assert wilcoxon_p([0.0] * 6) == 1.0
    low, high = mean_interval(np.array([[0.3], [0.3], [0.3]]))
    assert (low[0], high[0]) == (pytest.approx(0.3), pytest.approx(0.3))
    assert np.isnan(mean_interval(np.array([[0.3]]))[0]).all()  # one seed: no interval


def test_reference_is_found_by_plugin_not_by_label(tmp_path):
    trials = suite_trials()
    trials[s.METHOD] = trials[s.METHOD].replace({"grid": "full-grid"})
    trials[s.PLUGIN] = np.where(trials[s.METHOD] == "full-grid", "grid", "de-elbo")
    assert default_reference(trials) == "full-grid"
    assert "Reference: full-grid." in report_markdown(trials)
    old = trials.drop(columns=[s.PLUGIN])  # an old run directory: no plugin column
    assert default_reference(old) is None
    assert "Reference: full-grid (the run names no reference" in report_markdown(old)  # best
    assert default_reference(suite_trials().drop(columns=[s.PLUGIN])) == "grid"
    # a run directory's metadata names its reference: it wins
    ids = {c: trials[c].map(lambda v: None if pd.isna(v) else str(v)) for c in (s.TRIAL_ID, s.RETRAIN_OF)}
    write_table(tmp_path / s.TRIALS_FILE, trials.assign(**ids))  # parquet: one type a column
    write_json(tmp_path / s.METADATA_FILE, {s.REFERENCE: "learned",
                                            "budget": {"gpus_per_worker": 0}})
    text = report_run(tmp_path)
    assert "Reference: learned." in text and (tmp_path / s.REPORT_FILE).read_text() == text + "\n"
    assert "| learned | learned | 2 | 70.50 [70.00, 71.00] | 0 (reference) |" in text
    assert [p.name for p in plot_run(tmp_path, band="none")] == ["tradeoff.png", "tradeoff.svg"]


def test_a_label_grid_running_another_plugin_is_no_reference(tmp_path):
    """issue 26: ``[methods.grid] method = "tpe"`` and no grid plugin: compared with the
    best method, as the README says, not with the TPE run that happens to be called grid."""
    trials = suite_trials()
    trials[s.PLUGIN] = np.where(trials[s.METHOD] == "grid", "tpe", "de-elbo")
    assert default_reference(trials) is None
    assert "Reference: grid." not in report_markdown(trials)


def test_compute_unit_from_the_records():
    trials = suite_trials()
    cpu = trials.assign(**{s.CPU_S: trials[s.RESOURCE_S], s.GPU_S: 0.0})
    assert compute_unit(cpu, {}) == "CPU core-seconds"
    gpu = trials.assign(**{s.CPU_S: np.nan, s.GPU_S: trials[s.RESOURCE_S]})
    assert compute_unit(gpu, {}) == "GPU-seconds"
    assert compute_unit(cpu, {"records": "published:cifar10-resnet50"}).startswith("A100 GPU")
    assert compute_unit(gpu, {"compute_label": "A100 GPU-seconds"}) == "A100 GPU-seconds"
    mixed = trials.assign(**{s.CPU_S: trials[s.RESOURCE_S] / 2, s.GPU_S: trials[s.RESOURCE_S] / 2})
    assert compute_unit(mixed, {}).startswith("resource-seconds")


# --- the DE-ELBo study's own records -------------------------------------------------------

PUBLISHED_WINNERS = {  # random_state: (test_acc, winning configuration)
    1001: (0.6902, "l2-sp_lr_0=0.001_n=100_random_state=1001_tau=0.001"),
    2001: (0.6669, "l2-sp_lr_0=0.0001_n=100_random_state=2001_tau=0.0"),
    3001: (0.6877, "l2-sp_lr_0=0.001_n=100_random_state=3001_tau=1e-05"),
}
NAME = re.compile(r"^l2-sp_lr_0=(?P<lr>[^_]+)_n=(?P<n>\d+)_random_state=(?P<rs>\d+)_tau=(?P<tau>.+)$")


def _published(kind: str) -> pd.DataFrame:
    """ResNet-50 (the first, 24-configuration grid), L2-SP, N = 100, model_name parsed."""
    frame = pd.read_csv(PUBLISHED / f"{kind}_CIFAR-10_ResNet_50_v1.csv")  # the 24-config grid
    frame = frame[(frame["method"] == "l2-sp") & (frame["n"] == 100)].copy()
    parts = frame["model_name"].str.extract(NAME)
    assert parts.notna().all().all(), "unparsed model_name"
    assert (parts["n"].astype(int) == frame["n"]).all()
    assert (parts["rs"].astype(int) == frame["random_state"]).all()
    frame["config"] = "lr_0=" + parts["lr"] + ",tau=" + parts["tau"]
    assert not frame.duplicated(["random_state", "config"]).any()
    return frame


def _published_trials(tuned: pd.DataFrame, retrained: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for rs, g in tuned.groupby("random_state"):
        ended = g["runtime"].cumsum()  # completion order: the file's order, run one by one
        rows += [_row(**{s.TASK: "CIFAR-10 N=100", s.SEED: rs, s.TRIAL_ID: f"{rs}/{r.config}",
                         s.KIND: s.SEARCH, s.CONFIG: r.config, s.RESOURCE_S: r.runtime,
                         s.VAL_NLL: r.val_nll, s.ENDED_S: e})
                 for r, e in zip(g.itertuples(), ended)]
    rows += [_row(**{s.TASK: "CIFAR-10 N=100", s.SEED: r.random_state,
                     s.TRIAL_ID: f"retrain {r.random_state}/{r.config}", s.KIND: s.RETRAIN,
                     s.RETRAIN_OF: f"{r.random_state}/{r.config}", s.CONFIG: r.config,
                     s.RESOURCE_S: r.runtime, s.TEST_ACC: r.test_acc, s.TEST_NLL: r.test_nll,
                     s.ENDED_S: 1e9}) for r in retrained.itertuples()]
    return table(*rows)


def test_full_grid_reproduces_published_cifar10_n100():
    tuned, retrained = _published("tuned"), _published("retrained")
    assert tuned.groupby("random_state").size().to_dict() == {1001: 24, 2001: 24, 3001: 24}
    assert set(zip(tuned.random_state, tuned.config)) == set(zip(retrained.random_state, retrained.config))
    trials = _published_trials(tuned, retrained)
    last = anytime_curves(trials).groupby(s.SEED).tail(1).set_index(s.SEED)
    boot = grid_bootstrap(trials, draws=20, by_seed=True).groupby(s.SEED).tail(1).set_index(s.SEED)
    for rs, (acc, winner) in PUBLISHED_WINNERS.items():
        config = NAME.match(winner)
        config = f"lr_0={config['lr']},tau={config['tau']}"
        assert last.loc[rs, s.TRIAL_ID] == f"{rs}/{config}"
        assert round(last.loc[rs, s.TEST_ACC], 4) == acc
        assert round(boot.loc[rs, "mean"], 4) == acc
        expected = (tuned.loc[tuned.random_state == rs, "runtime"].sum()
                    + retrained.loc[(retrained.random_state == rs) & (retrained.config == config),
                                    "runtime"].item())
        assert last.loc[rs, s.K] == boot.loc[rs, s.K] == 24
        assert last.loc[rs, s.COMPUTE_S] == pytest.approx(expected, rel=1e-12)
        assert boot.loc[rs, s.COMPUTE_S] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seeds", [2, 3, 5, 10])
def test_the_mean_interval_is_scipys_bootstrap_to_the_bit(seeds):
    """``mean_interval`` computes each distinct resample once; the interval is exactly
    what scipy.stats.bootstrap's percentile interval of the mean gives."""
    from bench.analysis.stats import _bootstrap

    rng = np.random.default_rng(seeds)
    values = rng.random((seeds, 400))
    values[:, :40] = 0.5  # seeds that agree
    values[:, 40:200] = np.round(values[:, 40:200], 2)  # ties across resamples
    values[1, 200:220] = values[0, 200:220]
    ours = mean_interval(values)
    ci = _bootstrap(values, np.mean, vectorized=True).confidence_interval
    assert np.array_equal(ours[0], ci.low) and np.array_equal(ours[1], ci.high)
    one = mean_interval(values[:, 7])  # a single column, as the report asks
    assert one[0] == ours[0][7] and one[1] == ours[1][7]


@pytest.mark.parametrize("seeds", [2, 3, 5, 10])
def test_the_seed_interval_is_scipys_bootstrap_to_the_bit(seeds):
    """``seed_interval`` asks its statistic of each distinct resample once; the interval is
    exactly scipy.stats.bootstrap's over all the resamples, inf ends included (a target
    that some resamples never reach), vectorized or not."""
    from bench.analysis.stats import _bootstrap, seed_interval

    rng = np.random.default_rng(seeds)
    for never in (set(), {0}, set(range(seeds - 1))):  # seeds that never reach: inf
        reach = rng.random(seeds) * 100
        reach[list(never)] = np.inf

        def statistic(rows):  # a resample's worst seed, as compute to target takes it
            return reach[rows].max(axis=-1)

        def on_rows(sample, axis=-1):
            return statistic(np.moveaxis(sample, axis, -1).astype(int))

        ci = _bootstrap(np.arange(seeds, dtype=float), on_rows,
                        vectorized=True).confidence_interval
        scipys = tuple(float(np.inf if np.isnan(v) else v) for v in (ci.low, ci.high))
        assert seed_interval(seeds, statistic, vectorized=True) == scipys
        assert seed_interval(seeds, lambda row: float(statistic(row))) == scipys
