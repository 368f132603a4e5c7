"""The driver-side state of one (task, method, seed) campaign, shared by every backend:
which trials ran with which configuration, the incumbent and its retrains, the tuning
compute spent against the cap, and the records. ``run_inline`` runs a campaign one trial
at a time in this process (tests, ``check_method``); ``bench.ray_runner`` runs it on Ray."""

from __future__ import annotations

import copy
import itertools
import json
import time
from typing import Callable

from bench import schema as S
from bench.method import FINISHED, Context, Method, Result, search_space
from bench.suite import Budget
from bench.task import Task
from bench.trial import TrialSpec, execute_trial

CONTINUE, STOP = "CONTINUE", "STOP"  # the same words as Ray Tune's scheduler decisions


class Campaign:
    """Driver-side state of one (task, method, seed): trials, incumbent, compute spent."""

    def __init__(self, suite: str, task: Task, label: str, method: Method, seed: int,
                 budget: Budget, clock0: float, on_record=None,
                 clock: Callable[[], float] = time.perf_counter, discrete: bool = False) -> None:
        self.suite, self.task, self.label, self.method = suite, task, label, method
        self.seed, self.budget, self.clock0 = seed, budget, clock0
        self.on_record = on_record
        self.clock = clock  # wall time, or a replay's simulated time
        self.kinds: dict[str, tuple[str, dict, str | None]] = {}
        self.started: dict[str, float] = {}
        self.stopped_as: dict[str, str] = {}
        self.rows: list[dict] = []
        self.reports: list[dict] = []
        self.retrain_queue: list[tuple[dict, str]] = []
        self.best: tuple[float, str] | None = None
        self.spent_s = 0.0
        self.method_done = False
        self.number = 0  # position in the suite, set when it starts
        self.cap_s = task.cap_s or budget.cap_s
        self.worker_method = copy.deepcopy(method)  # unstarted: workers only call fit()
        method.start(Context(task, search_space(task), seed, self.cap_s, budget.workers,
                             discrete))

    @property
    def res(self) -> float:
        return self.budget.resources_per_worker

    def running(self) -> list[str]:
        """Trials started or pending, of any kind, not yet complete."""
        done = {r[S.TRIAL_ID] for r in self.rows}
        return [t for t in self.kinds if t not in done]

    def running_tuning(self) -> list[str]:
        """Running trials that count against the cap (all but retrains)."""
        return [t for t in self.running() if self.kinds[t][0] != S.RETRAIN]

    def tuning_spent(self) -> float:
        """Finished tuning trials' compute plus what running ones have used so far."""
        now = self.clock()
        return self.spent_s + sum((now - self.started[t]) * self.res
                                  for t in self.running_tuning() if t in self.started)

    def over_cap(self) -> bool:
        return self.tuning_spent() >= self.cap_s

    # -- called by the backends (Ray or inline)

    def next_config(self, trial_id: str):
        if self.retrain_queue:
            hp, of = self.retrain_queue.pop(0)
            self.kinds[trial_id] = (S.RETRAIN, hp, of)
            return {"kind": S.RETRAIN, "hp": hp}
        if not self.method_done and not self.over_cap():
            config = self.method.suggest(trial_id)
            if config is None:
                return None if self.running_tuning() else self._stalled()
            if config != FINISHED:
                kind = S.SEARCH if self.method.uses_validation else S.LEARNED
                hp = {k: float(v) for k, v in config.items()}
                self.kinds[trial_id] = (kind, hp, None)
                return {"kind": kind, "hp": hp}
            self.method_done = True
        # nothing new: wait while running trials may still produce an incumbent to retrain
        return None if self.running_tuning() else FINISHED

    def _stalled(self):
        self.method_done = True  # waiting on nothing would spin forever
        return FINISHED

    def trial_started(self, trial_id: str) -> None:
        self.started.setdefault(trial_id, self.clock())

    def trial_report(self, trial_id: str, result: dict) -> str:
        if result.get("phase") != "epoch":
            return CONTINUE
        kind, _, _ = self.kinds[trial_id]
        metrics = {k: result[k] for k in (S.TRAIN_LOSS, S.VAL_NLL, S.VAL_ACC) if k in result}
        self.reports.append({S.SUITE: self.suite, S.TASK: self.task.name, S.METHOD: self.label,
                             S.SEED: self.seed, S.TRIAL_ID: trial_id, S.STEP: result[S.STEP],
                             S.EPOCH: None, **metrics})
        if kind != S.RETRAIN and self.over_cap():
            self.stopped_as[trial_id] = S.OVER_BUDGET
            return STOP
        if kind == S.SEARCH and self.method.on_report(trial_id, result[S.STEP], metrics):
            self.stopped_as[trial_id] = S.PRUNED
            return STOP
        return CONTINUE

    def trial_complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        ended = self.clock()
        kind, hp, retrain_of = self.kinds[trial_id]
        started = self.started.get(trial_id, ended)
        result = result or {}
        final = result.get("phase") == "final"
        if trial_id in self.stopped_as:
            status = self.stopped_as[trial_id]
        elif error or not final:
            status = S.FAILED
        else:
            status = result.get(S.STATUS, S.FAILED)
        wall = ended - started
        train_s = result.get(S.TRAIN_S) if final else None
        eval_s = result.get(S.EVAL_S) if final else None
        row = {
            S.SUITE: self.suite, S.TASK: self.task.name, S.METHOD: self.label, S.SEED: self.seed,
            S.TRIAL_ID: trial_id, S.KIND: kind, S.STATUS: status,
            S.CONFIG: json.dumps(hp, sort_keys=True), S.RETRAIN_OF: retrain_of,
            S.STARTED_S: started - self.clock0, S.ENDED_S: ended - self.clock0, S.WALL_S: wall,
            S.RESOURCE_S: wall * self.res, S.CPU_S: wall * self.budget.cpus_per_worker,
            S.GPU_S: wall * self.budget.gpus_per_worker,
            S.TRAIN_S: train_s, S.EVAL_S: eval_s,
            S.OVERHEAD_S: wall - (train_s or 0) - (eval_s or 0),
            S.NODE: result.get(S.NODE), S.STEPS_DONE: result.get(S.STEPS_DONE),
            S.ERROR: result.get(S.ERROR) or ("trial process failed" if error else None),
            S.INFO: result.get(S.INFO),
        }
        if status == S.OK:
            for key in (S.VAL_NLL, S.VAL_ACC, S.TEST_NLL, S.TEST_ACC, S.OBJECTIVE):
                row[key] = result.get(key)
        self.rows.append(row)
        if kind != S.RETRAIN:
            self.spent_s += row[S.RESOURCE_S]
            score = row.get(S.VAL_NLL) if kind == S.SEARCH else row.get(S.OBJECTIVE)
            self.method.on_result(Result(trial_id, hp, status, score if status == S.OK else None,
                                         {k: row[k] for k in (S.VAL_NLL, S.VAL_ACC, S.TEST_NLL,
                                                              S.TEST_ACC) if row.get(k) is not None}))
            if kind == S.SEARCH and status == S.OK and score is not None:
                improved = self.best is None or score < self.best[0]
                if improved:
                    self.best = (score, trial_id)
                if improved or self.method.retrain_all:
                    self.retrain_queue.append((hp, trial_id))
        if self.on_record:
            self.on_record(self, row)



class CampaignQueue:
    """The suite's campaigns in order. The next campaign starts as soon as the running ones
    have no trial to offer, so workers idle while a campaign drains its last trials are
    given to the next one; each campaign still runs at most ``workers`` trials at once."""

    def __init__(self, plans: list[Callable[[], Campaign]], on_start=None, on_done=None) -> None:
        self.plans = plans
        self.on_start, self.on_done = on_start, on_done
        self.active: list[tuple[int, Campaign]] = []
        self.exhausted: set[int] = set()
        self.next_plan = 0
        self.owner: dict[str, tuple[int, Campaign]] = {}

    def suggest(self, trial_id: str):
        for idx, campaign in list(self.active):
            if idx in self.exhausted:
                continue
            config = campaign.next_config(trial_id)
            if config == FINISHED:
                self.exhausted.add(idx)
                self._maybe_done(idx, campaign)
            elif config is not None:
                self.owner[trial_id] = (idx, campaign)
                return {"campaign": idx, **config}
        if self.next_plan < len(self.plans):
            idx, self.next_plan = self.next_plan, self.next_plan + 1
            campaign = self.plans[idx]()
            self.active.append((idx, campaign))
            if self.on_start:
                self.on_start(campaign)
            return self.suggest(trial_id)
        return None if self.active else FINISHED

    def started(self, trial_id: str) -> None:
        if trial_id in self.owner:
            self.owner[trial_id][1].trial_started(trial_id)

    def report(self, trial_id: str, result: dict) -> str:
        return self.owner[trial_id][1].trial_report(trial_id, result)

    def complete(self, trial_id: str, result, error: bool) -> None:
        if trial_id not in self.owner:
            return
        idx, campaign = self.owner[trial_id]
        campaign.trial_complete(trial_id, result, error)
        self._maybe_done(idx, campaign)

    def _maybe_done(self, idx: int, campaign: Campaign) -> None:
        if idx in self.exhausted and not campaign.running() and (idx, campaign) in self.active:
            self.active.remove((idx, campaign))
            if self.on_done:
                self.on_done(campaign)


def run_inline(campaign: Campaign) -> None:
    """Run a campaign's trials one after another in this process."""
    spec = TrialSpec(campaign.task, campaign.seed, campaign.worker_method,
                     threads=max(1, int(campaign.budget.cpus_per_worker)),
                     gpus=campaign.budget.gpus_per_worker)
    for number in itertools.count():
        trial_id = f"t{number:04d}"
        config = campaign.next_config(trial_id)
        if config in (FINISHED, None):  # None: nothing runs that could change its mind
            return
        campaign.trial_started(trial_id)
        final = execute_trial(config, spec,
                              lambda result: campaign.trial_report(trial_id, result) == STOP)
        campaign.trial_complete(trial_id, final, error=False)
