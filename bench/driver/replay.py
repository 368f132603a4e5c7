"""Replay: search methods run against runs already recorded, in simulated time.

A trial "takes" its recorded runtime; the worker pool, the cap (checked at simulated epoch
reports, as live) and the campaign order are those of a live run, driven by the same
``Campaign`` and ``CampaignQueue`` code. Only the backend differs: a discrete-event
simulation instead of Ray. Methods see a discrete space (each hyperparameter's recorded
values), so every suggestion has a recorded run. Records come from the published DE-ELBo
study (``published:<name>``) or from a harness run directory whose grid retrained every
configuration (``retrain_all = true``). A harness run's recorded per-epoch reports
(``bench.records.learning_curves``) are replayed at their steps, validation metrics included
where recorded, so pruning methods act on them; a pruning method (``reports_validation``)
is refused on records without them for every configuration (published records have none).
The replay suites that drive it: ``bench.driver.replay_suite``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
from dataclasses import dataclass

import pandas as pd

from bench.contract import schema as S
from bench.contract.protocol import SCORES, Decision, EpochReport, FinalResult, TrialRequest
from bench.contract.space import Param
from bench.driver.campaign import CampaignQueue
from bench.records.learning_curves import LearningCurves, report_times
from bench.records.published import PREFIX, config_key, published_runs
from bench.records.tables import read_reports, read_trials

REPORTS_PER_TRIAL = 10  # simulated epoch reports of a run whose epoch time is unknown
NODE = "replay"  # where a replayed trial ran


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
        validated = [self.curves.validated(r) for r in ok.to_dict("records")]
        ok = ok.assign(_key=[config_key(json.loads(c)) for c in ok[S.CONFIG]],
                       _validated=validated).sort_values("_validated", kind="stable")
        self.runs = {(r[S.TASK], int(r[S.SEED]), r[S.KIND], r["_key"]): r
                     for r in ok.to_dict("records")}
        self.trials = ok

    def _search_runs(self, task: str, seeds=None) -> list[dict]:
        return [r for (t, seed, kind, _), r in self.runs.items()
                if t == task and kind == S.SEARCH and (seeds is None or seed in seeds)]

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
        return sorted(set(self.trials[S.TASK]))

    def space(self, task: str) -> tuple[Param, ...]:
        """Each hyperparameter's recorded values (grid), over the task's search runs, in a
        live task's order: the learning rate first, then the regularizer's (by name)."""
        runs = self.trials[(self.trials[S.TASK] == task) & (self.trials[S.KIND] == S.SEARCH)]
        configs = [json.loads(c) for c in runs[S.CONFIG]]
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
    ``method`` if given (a run directory's grid, beside the other methods it ran)."""
    trials, reports = load_records(source), load_reports(source)
    if method is not None:
        trials = trials[trials[S.METHOD] == method]
        reports = None if reports is None else reports[reports[S.METHOD] == method]
    return Recorded(trials, reports)


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _epoch_s(run: dict) -> float:
    info = json.loads(run.get(S.INFO) or "{}") if isinstance(run.get(S.INFO), str) else {}
    epoch = info.get("epoch_s")
    return epoch if epoch and epoch > 0 else run[S.WALL_S] / REPORTS_PER_TRIAL


def simulate(queue: CampaignQueue, recorded: Recorded, workers: int,
             clock: SimulatedClock) -> None:
    """Run the queue's campaigns against the records: a discrete-event simulation."""
    events: list[tuple[float, int, str, EpochReport | FinalResult]] = []
    order = itertools.count()
    live: set[str] = set()
    ids = itertools.count()
    while True:
        request = None
        while len(live) < workers:
            trial_id = f"r{next(ids):06d}"
            request = queue.suggest(trial_id)
            if not isinstance(request, TrialRequest):
                break
            _, campaign = queue.owner[trial_id]
            queue.started(trial_id)
            live.add(trial_id)
            for at, message in _recorded_run(recorded, campaign, request):
                heapq.heappush(events, (clock.now + at, next(order), trial_id, message))
        if not live:
            if request is None and queue.active:
                raise RuntimeError("replay stalled: campaigns wait with nothing running")
            return
        at, _, trial_id, message = heapq.heappop(events)
        if trial_id not in live:
            continue  # stopped at an earlier report
        clock.now = at
        if isinstance(message, EpochReport) and \
                queue.report(trial_id, message) != Decision.STOP:
            continue
        live.remove(trial_id)
        queue.complete(trial_id, message if isinstance(message, FinalResult) else None)


def _recorded_run(recorded: Recorded, campaign, request: TrialRequest):
    """The messages a trial's recorded run sends, with their seconds into the run: its
    epoch reports, then its final result (a failure if nothing was recorded for it)."""
    run = recorded.lookup(campaign.task.name, campaign.seed, request.kind, request.hp)
    if run is None:
        return [(0.0, FinalResult(S.FAILED, node=NODE, error=f"no recorded {request.kind} "
                                                             f"run for {request.hp}"))]
    wall, curve = float(run[S.WALL_S]), recorded.curves.of(run)
    if curve:  # the recorded reports, metrics and all, at their steps
        messages = [(at, EpochReport(report[S.STEP],
                                     {k: v for k, v in report.items() if k != S.STEP},
                                     node=NODE))
                    for at, report in zip(report_times(run, curve), curve)]
    else:
        epoch = _epoch_s(run)
        messages = [(k * epoch, EpochReport(k, node=NODE))
                    for k in range(1, math.ceil(wall / epoch))]
    final = FinalResult(S.OK, {key: run.get(key) for key in SCORES},
                        steps_done=run.get(S.STEPS_DONE), train_s=run.get(S.TRAIN_S),
                        eval_s=run.get(S.EVAL_S), node=NODE)
    return messages + [(wall, final)]
