"""Normalised regret against a task's configuration table (a tie left out and counted) and
performance profiles, on hand-made records with hand-computed expectations (issue 27)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.analysis.compare import compare_markdown, compare_scores
from bench.analysis.regret import anchors_of, performance_profile, task_anchors
from bench.contract import schema as s
from bench.records.tables import write_json, write_table


def search_runs(task, method, plugin, configs, retrain_all) -> list[dict]:
    """One seed's search trials, in order, each costing 10 (val NLL, test accuracy of its
    retrain); a retrain (cost 5) for every trial, or only for each new incumbent."""
    rows, best = [], math.inf
    for i, (val, acc) in enumerate(configs):
        base = dict.fromkeys(s.TRIAL_COLUMNS)
        base.update({s.SUITE: "t", s.TASK: task, s.METHOD: method, s.PLUGIN: plugin,
                     s.SEED: 0, s.STATUS: s.OK, s.ENDED_S: float(i)})
        rows.append({**base, s.TRIAL_ID: f"t{i}", s.KIND: s.SEARCH, s.VAL_NLL: val,
                     s.RESOURCE_S: 10.0})
        if retrain_all or val < best:
            rows.append({**base, s.TRIAL_ID: f"t{i}-retrain", s.KIND: s.RETRAIN,
                         s.RETRAIN_OF: f"t{i}", s.TEST_ACC: acc, s.TEST_NLL: 1 - acc,
                         s.RESOURCE_S: 5.0, s.ENDED_S: i + 0.5})
        best = min(best, val)
    return rows


# per task: the grid's table (val NLL, test accuracy), and the one configuration rs tries
TABLES = {
    # best .90, median .80: range 10 pp; the grid ends on (.4, .80): regret 1; rs 0
    "t1": ([(0.5, 0.90), (0.4, 0.80), (0.6, 0.70)], (0.5, 0.90)),
    # best .95, median .94: range 1 pp; the grid ends on (.1, .90): regret 5; rs 0
    "t2": ([(0.3, 0.95), (0.2, 0.94), (0.1, 0.90)], (0.3, 0.95)),
    # best .802, median .800: range 0.2 pp < 0.5: a tie
    "t3": ([(0.3, 0.800), (0.2, 0.802), (0.1, 0.798)], (0.3, 0.800)),
}


@pytest.fixture
def table_run(tmp_path):
    rows = []
    for task, (grid, tried) in TABLES.items():
        rows += search_runs(task, "grid", "grid", grid, retrain_all=True)
        rows += search_runs(task, "rs", "random", [tried], retrain_all=False)
    run = tmp_path / "run"
    run.mkdir()
    write_table(run / s.TRIALS_FILE, pd.DataFrame(rows, columns=list(s.TRIAL_COLUMNS)))
    write_json(run / s.METADATA_FILE, {s.REFERENCE: "grid"})
    return run


def test_regret_on_a_three_task_table_with_one_tie(table_run):
    scores = compare_scores([table_run], fractions=(1.0,))
    got = scores.set_index(["task", s.METHOD])["regret"]
    assert set(scores["anchor"]) == {"grid table"}
    assert got[("t1", "grid")] == pytest.approx(1.0)
    assert got[("t2", "grid")] == pytest.approx(5.0)
    assert got[("t1", "rs")] == pytest.approx(0.0) and got[("t2", "rs")] == pytest.approx(0.0)
    assert math.isnan(got[("t3", "grid")]) and math.isnan(got[("t3", "rs")])  # the tie
    text = compare_markdown(scores, None, [str(table_run)])
    assert "1 tie left out of the regret means (t3)" in text
    cells = [[x.strip() for x in line.strip("|").split("|")]
             for line in text.splitlines() if line.startswith("| ")]
    summary = {c[0]: c for c in cells if len(c) == 5}  # method, kind, tasks, regret, rank
    # mean over the 2 non-tie tasks: grid (1 + 5) / 2, rs 0; ranks over all 3 tasks
    # (t3 too: the grid ends on .798, rs on .800)
    assert summary["grid"][2:] == ["3", "3.00 [1.00, 5.00]", "2.00"]
    assert summary["rs"][2:] == ["3", "0.00 [0.00, 0.00]", "1.00"]
    assert [c[5:] for c in cells if c[0] == "t3"] == [["tie", "tie"]]
    # profile at tau = 0, 0.1, 0.25, 0.5, 1 over the 2 non-tie tasks: grid's gaps 1 and 5
    assert [c for c in text.splitlines() if c.startswith("| grid | 2 |")] == \
        ["| grid | 2 | 0.00 | 0.00 | 0.00 | 0.00 | 0.50 |"]
    assert "| rs | 2 | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 |" in text


def test_anchors_are_each_seeds_best_and_median_averaged():
    table = pd.DataFrame({s.SEED: [0, 0, 0, 1, 1, 1, 1],
                          s.TEST_ACC: [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]})
    a = anchors_of(table, "grid table")
    assert (a.best, a.low, a.seeds) == pytest.approx((0.75, (0.8 + 0.45) / 2, 2))
    assert a.regret(0.75) == pytest.approx(0) and a.regret(a.low) == pytest.approx(1)
    assert not a.tie


def test_a_published_task_is_anchored_on_its_published_table(table_run):
    trials = pd.read_parquet(table_run / s.TRIALS_FILE)
    a = task_anchors("cifar10-resnet50-N100", trials.iloc[:0],
                     ["published:cifar10-convnext", " published:cifar10-resnet50"])
    assert a.source == "published table" and a.seeds == 3 and a.best > a.low
    no_table = task_anchors("t1", trials[(trials[s.TASK] == "t1") & (trials[s.METHOD] == "rs")])
    assert no_table.source == "all runs" and no_table.best == pytest.approx(0.9)


def test_performance_profile_on_a_four_method_table():
    regret = pd.DataFrame({"a": [0.0, 0.3, 0.4, np.nan], "b": [0.3, 0.1, 0.4, np.nan],
                           "c": [0.5, 0.1, 2.0, np.nan], "d": [np.nan, 1.0, 0.4, np.nan]},
                          index=["t1", "t2", "t3", "tie"])
    # best per task: t1 0 (a), t2 .1 (b, c), t3 .4 (a, b, d); the tie row is left out
    # gaps: a 0 .2 0; b .3 0 0; c .5 0 1.6; d (no t1) .9 0
    profile = performance_profile(regret, [0.0, 0.25, 0.5, 1.0, 2.0])
    assert profile["a"].tolist() == pytest.approx([2 / 3, 1, 1, 1, 1])
    assert profile["b"].tolist() == pytest.approx([2 / 3, 2 / 3, 1, 1, 1])
    assert profile["c"].tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    assert profile["d"].tolist() == pytest.approx([1 / 2, 1 / 2, 1 / 2, 1, 1])
