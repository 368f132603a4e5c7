"""Normalised regret per task, its mean over tasks, and performance profiles
(docs/methods.md#normalised-regret).

Per task two reference points, from the task's *configuration table* where one exists (a
published record set's retrained runs; else a grid run that retrained every configuration),
else from every test-scored run of the task in the compared directories: on each seed its
best test accuracy and its median (the low anchor), each averaged over seeds. A method's
normalised regret at a budget is ``(best - acc) / (best - median)``: 0 = the best
configuration, 1 = a median one, above 1 worse than half the table; below 0 only where a
method beats every configuration of the table (a learned method, or a per-seed pick).
The form is Syne Tune's (``benchmarking/results_analysis/show_results.py``,
``plot_average_normalized_regret``), whose low anchor is the worst value; the median
replaces it because a table's worst configurations diverge (25% on AG News, 56-70 points
below the best) and would squeeze every method's regret towards 0. A task whose range
(best minus median) is below ``TIE_FLOOR`` is a tie: no regret, left out of every mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.analysis.stats import mean_interval
from bench.contract.schema import (KIND, LEARNED, METHOD, OK, PLUGIN, RETRAIN, RETRAIN_OF,
                                   SEARCH, SEED, STATUS, TASK, TEST_ACC, TRIAL_ID)
from bench.records.published import published_runs
from bench.records.rundir import GRID_PLUGIN

TIE_FLOOR = 0.005  # 0.5 percentage points: below, the table cannot tell methods apart
PROFILE_TAUS = (0.0, 0.1, 0.25, 0.5, 1.0)  # the performance-profile table's columns
PUBLISHED = "published:"


@dataclass(frozen=True)
class Anchors:
    """A task's reference points (accuracies in [0, 1]) and where they come from."""

    best: float
    low: float
    source: str  # "published table", "grid table" or "all runs"
    seeds: int

    @property
    def range(self) -> float:
        return self.best - self.low

    @property
    def tie(self) -> bool:
        return not self.range >= TIE_FLOOR

    def regret(self, acc):
        """Normalised regret of ``acc`` (array or scalar); NaN on a tie or a missing acc."""
        acc = np.asarray(acc, dtype=float)
        return np.full(acc.shape, np.nan) if self.tie else (self.best - acc) / self.range


def anchors_of(table: pd.DataFrame, source: str) -> Anchors:
    """Best and median test accuracy on each seed of ``table`` (SEED, TEST_ACC rows), each
    averaged over seeds: the per-seed data subsets are different instances of the task."""
    per_seed = table.groupby(SEED)[TEST_ACC].agg(["max", "median"])
    return Anchors(float(per_seed["max"].mean()), float(per_seed["median"].mean()), source,
                   len(per_seed))


def _scored(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[(rows[STATUS] == OK) & rows[TEST_ACC].notna()]


def _published_table(task: str, record_sets: list[str]) -> pd.DataFrame | None:
    for name in (n for n in record_sets if task.startswith(f"{n}-N")):
        runs = published_runs(name)
        rows = _scored(runs[(runs[TASK] == task) & (runs[KIND] == RETRAIN)])
        if len(rows):
            return rows
    return None


def _grid_table(task_trials: pd.DataFrame) -> pd.DataFrame | None:
    """A grid label's retrains, if on every seed every OK search trial has one."""
    plugin = task_trials[PLUGIN] if PLUGIN in task_trials else task_trials[METHOD]
    for label in sorted(set(task_trials.loc[plugin == GRID_PLUGIN, METHOD])):
        mine = task_trials[task_trials[METHOD] == label]
        search = mine[(mine[KIND] == SEARCH) & (mine[STATUS] == OK)]
        retrains = _scored(mine[mine[KIND] == RETRAIN])
        done = set(zip(retrains[SEED], retrains[RETRAIN_OF].astype(str)))
        if len(search) and all((s, str(t)) in done for s, t in zip(search[SEED],
                                                                   search[TRIAL_ID])):
            return retrains
    return None


def task_anchors(task: str, task_trials: pd.DataFrame,
                 record_sets: list[str] | None = None) -> Anchors:
    """The task's anchors: its published table (``record_sets``: the run's
    ``published:<name>`` records), else a grid run's full table, else all its scored runs
    (retrains and learned runs of every method and seed)."""
    sets = [r.strip().removeprefix(PUBLISHED) for r in record_sets or []
            if r.strip().startswith(PUBLISHED)]
    table = _published_table(task, sets) if sets else None
    if table is not None:
        return anchors_of(table, "published table")
    table = _grid_table(task_trials)
    if table is not None:
        return anchors_of(table, "grid table")
    runs = _scored(task_trials[task_trials[KIND].isin([RETRAIN, LEARNED])])
    return anchors_of(runs, "all runs")


def mean_over_tasks(values) -> tuple[float, float, float, int]:
    """Mean of per-task values (NaN left out), its 95% bootstrap interval over tasks
    (percentile, ``bench.analysis.stats``; NaN below 2 tasks) and the count."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return np.nan, np.nan, np.nan, 0
    low, high = mean_interval(v[:, None])
    return float(v.mean()), float(low[0]), float(high[0]), len(v)


def performance_profile(regret: pd.DataFrame, taus) -> pd.DataFrame:
    """Dolan-More profile on normalised regret: for each method (column of ``regret``,
    one row per task, NaN where the method has no value), the fraction of its tasks on
    which its regret is within ``tau`` of the task's best method's; index ``taus``.
    Tasks no method has a value on (ties) are left out."""
    regret = regret.dropna(how="all")
    gap = regret.sub(regret.min(axis=1), axis=0)
    taus = np.asarray(taus, dtype=float)
    return pd.DataFrame({m: [(gap[m].dropna() <= t + 1e-12).mean() if gap[m].notna().any()
                             else np.nan for t in taus] for m in gap.columns}, index=taus)
