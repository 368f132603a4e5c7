"""Recorded learning curves: the per-epoch reports a harness run directory keeps
(``reports.parquet``), looked up by run and turned back into the reports a replay sends.

A run recorded by a method with ``reports_validation = True`` (or a grid told to report
validation) has validation NLL and accuracy at every epoch; replayed at their recorded
steps, pruners act on them as they would live. The reports carry no time of their own,
so a report at step s of S is placed at ``setup + (train_s + eval_s) * s / S`` into the
run (setup: the run's wall time outside training and evaluation, spent before its first
step); a run without timings is spread evenly over its wall time. Published CSVs have no
per-epoch records at all.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.contract import schema as S

REPORTED = (S.TRAIN_LOSS, S.VAL_NLL, S.VAL_ACC)  # what a report hands a method
Key = tuple[str, int, str, str]  # (task, seed, method label, trial id)


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class LearningCurves:
    """Each recorded run's reports in step order, by (task, seed, method, trial id)."""

    def __init__(self, reports: pd.DataFrame | None) -> None:
        self.curves: dict[Key, list[dict]] = {}
        if reports is None or reports.empty:
            return
        ordered = reports.sort_values(S.STEP, kind="stable")
        for row in ordered.to_dict("records"):
            key = (row[S.TASK], int(row[S.SEED]), row[S.METHOD], row[S.TRIAL_ID])
            metrics = {k: v for k in (S.EPOCH, *REPORTED)
                       if (v := _number(row.get(k))) is not None}
            self.curves.setdefault(key, []).append({S.STEP: int(row[S.STEP]), **metrics})

    def of(self, run: dict) -> list[dict]:
        """The reports of the recorded run ``run`` (a trials row); [] if none."""
        return self.curves.get((run[S.TASK], int(run[S.SEED]), run[S.METHOD], run[S.TRIAL_ID]),
                               [])

    def validated(self, run: dict) -> bool:
        """Whether the run reported validation NLL at every one of its reports."""
        curve = self.of(run)
        return bool(curve) and all(S.VAL_NLL in r for r in curve)


def report_times(run: dict, curve: list[dict]) -> list[float]:
    """Seconds into the run at which each report of ``curve`` was made (see above)."""
    wall = float(run[S.WALL_S])
    steps = _number(run.get(S.STEPS_DONE)) or max(r[S.STEP] for r in curve)
    train, evals = _number(run.get(S.TRAIN_S)), _number(run.get(S.EVAL_S))
    work = train + evals if train is not None and evals is not None else None
    if work is None or not 0 < work <= wall:
        setup, work = 0.0, wall
    else:
        setup = wall - work
    return [setup + work * min(r[S.STEP] / steps, 1.0) for r in curve]
