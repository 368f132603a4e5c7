"""The recorded-run model replays run on: finished runs looked up by (task, seed, kind,
configuration), with their per-epoch reports where recorded, and the tasks they span.
Records come from the published DE-ELBo study (``published:<name>``, several joined by
``SEPARATOR``) or from a harness run directory. The simulator that replays them:
``bench.driver.replay``; the replay suite's checks against them: ``bench.driver.suite_records``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.contract import schema as S
from bench.contract.space import Param
from bench.records.learning_curves import LearningCurves
from bench.records.published import PREFIX, config_key, published_runs
from bench.records.tables import read_reports, read_trials, rows_of


@dataclass(frozen=True)
class RecordedTask:
    """A task of the records: its name, the discrete space its configurations span, and
    (where the records have per-epoch reports) a full search run's steps and reports."""

    name: str
    space: tuple[Param, ...]
    cap_s: float | None = None
    steps: int | None = None
    epochs: int | None = None  # evaluation reports of a full search run

    def search_space(self) -> tuple[Param, ...]:
        return self.space


class Recorded:
    """Finished runs, looked up by (task, seed, kind, configuration), with their per-epoch
    reports where the records keep them (a harness run directory's reports.parquet). Of
    two runs of one configuration, one with validation at every epoch is the one used."""

    def __init__(self, trials: pd.DataFrame, reports: pd.DataFrame | None = None) -> None:
        ok = trials[(trials[S.STATUS] == S.OK) & trials[S.KIND].isin([S.SEARCH, S.RETRAIN])]
        self.curves = LearningCurves(reports)
        rows = rows_of(ok)  # read once
        # each configuration's text made a key once: many runs share one
        canonical = {c: config_key(json.loads(c)) for c in {r[S.CONFIG] for r in rows}}
        keys = [canonical[r[S.CONFIG]] for r in rows]
        validated = [self.curves.validated(r) for r in rows]
        order = np.argsort(np.array(validated, dtype=bool), kind="stable")
        self.trials = ok.assign(_key=keys, _validated=validated).iloc[order]
        self._tasks = sorted({r[S.TASK] for r in rows})  # asked per task: read once
        self.runs = {}
        for i in order:
            r = rows[i] | {"_key": keys[i], "_validated": validated[i]}
            self.runs[(r[S.TASK], int(r[S.SEED]), r[S.KIND], r["_key"])] = r
        self._search: dict[str, list[tuple[int, dict]]] = {}  # task -> (seed, run), as runs
        for (task, seed, kind, _), r in self.runs.items():
            if kind == S.SEARCH:
                self._search.setdefault(task, []).append((seed, r))

    def _search_runs(self, task: str, seeds=None) -> list[dict]:
        return [r for seed, r in self._search.get(task, ())
                if seeds is None or seed in seeds]

    def steps(self, task: str) -> int | None:
        """A full search run's optimiser steps (None: not recorded)."""
        done = pd.to_numeric(pd.Series([r.get(S.STEPS_DONE) for r in self._search_runs(task)],
                                       dtype=object), errors="coerce").dropna()
        return int(done.max()) if len(done) else None

    def epochs(self, task: str) -> int | None:
        """Evaluation reports of a full search run (None: no per-epoch validation)."""
        counts = [len(self.curves.of(r)) for r in self._search_runs(task)
                  if self.curves.validated(r)]
        return max(counts) if counts else None

    def unvalidated(self, task: str, seeds) -> tuple[int, int]:
        """(configurations without per-epoch validation, configurations) of the task's
        search runs at ``seeds``."""
        runs = self._search_runs(task, set(seeds))
        return sum(not self.curves.validated(r) for r in runs), len(runs)

    def tasks(self) -> list[str]:
        return list(self._tasks)

    def space(self, task: str) -> tuple[Param, ...]:
        """Each hyperparameter's recorded values (grid), over the task's search runs, in a
        live task's order: the learning rate first, then the regularizer's (by name)."""
        configs = [json.loads(r[S.CONFIG]) for r in self._search_runs(task)]
        params = []
        for name in sorted({k for c in configs for k in c}, key=lambda k: (k != "lr", k)):
            values = sorted({float(c[name]) for c in configs if name in c}, reverse=True)
            positive = [v for v in values if v > 0]
            params.append(Param(name, min(positive or [1.0]), max(positive or [1.0]),
                                tuple(values)))
        return tuple(params)

    def lookup(self, task: str, seed: int, kind: str, hp: dict) -> dict | None:
        return self.runs.get((task, seed, kind, config_key(hp)))


SEPARATOR = ", "  # between the record sets of a suite that replays several


def load_records(source: str) -> pd.DataFrame:
    if source.startswith(PREFIX):
        return pd.concat([published_runs(part) for part in source.split(SEPARATOR)],
                         ignore_index=True)
    return read_trials(source)


def load_reports(source: str) -> pd.DataFrame | None:
    """The records' per-epoch reports: a run directory's; published records have none."""
    return None if source.startswith(PREFIX) else read_reports(source)


def load_recorded(source: str, method: str | None = None) -> Recorded:
    """The records of ``source`` with their reports; only the runs of the method labelled
    ``method`` if given (a run directory's grid, beside the other methods it ran).
    Published record sets never change: read once per process (a replay suite's checks
    and its replay share them); a run directory is read every time."""
    if source.startswith(PREFIX):
        return _published_recorded(source, method)
    return _load_recorded(source, method)


@functools.lru_cache(maxsize=4)
def _published_recorded(source: str, method: str | None) -> Recorded:
    return _load_recorded(source, method)


def _load_recorded(source: str, method: str | None) -> Recorded:
    trials, reports = load_records(source), load_reports(source)
    if method is not None:
        trials = trials[trials[S.METHOD] == method]
        reports = None if reports is None else reports[reports[S.METHOD] == method]
    return Recorded(trials, reports)
