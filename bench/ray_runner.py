"""Runs one (task, method, seed) campaign on Ray Tune.

The method stays Ray-free: a Tune ``Searcher`` asks it for configurations (and injects
the retraining of every new incumbent), a FIFO ``TrialScheduler`` passes per-epoch reports
to it (pruning) and stops trials once the tuning compute reaches the cap. The trainable
runs ``method.fit`` on a worker and reports a final record; the driver keeps every record.
"""

from __future__ import annotations

import copy
import functools
import json
import socket
import time
import traceback
from dataclasses import dataclass

from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from bench import schema as S
from bench.method import FINISHED, Context, FitData, Method, Result, search_space
from bench.metrics import evaluate
from bench.suite import Budget
from bench.task import Task


# ---------------------------------------------------------------- worker side


@functools.lru_cache(maxsize=4)
def _task_data(task: Task, seed: int):
    """Prepared tensors, kept in the (reused) worker process across trials."""
    return task.load(seed)


@dataclass(frozen=True)
class TrialSpec:
    task: Task
    seed: int
    method: Method
    threads: int


def run_trial(config: dict, spec: TrialSpec) -> None:
    """The Tune trainable: fit, evaluate, report one final record (failures included)."""
    import torch

    started = time.perf_counter()
    torch.set_num_threads(spec.threads)
    kind, hp = config["kind"], config["hp"]
    final = {"phase": "final", S.NODE: socket.gethostname()}
    try:
        data = _task_data(spec.task, spec.seed)
        if kind == S.SEARCH:
            train, held_out = data.split()
            fit_data = FitData(spec.task, spec.seed, train, held_out, data.num_classes,
                               data.network)
        else:  # retrain or learned run: all N, no validation data; scored on the test set
            held_out = data.test
            fit_data = FitData(spec.task, spec.seed, data.train, None, data.num_classes,
                               data.network)

        def report(step: int, metrics: dict) -> bool:
            tune.report({"phase": "epoch", S.STEP: step, **metrics})
            return False

        fitted = spec.method.fit(fit_data, hp, report)
        eval_started = time.perf_counter()
        scores = evaluate(fitted.network.model, *held_out)
        eval_s = fitted.eval_s + time.perf_counter() - eval_started
        prefix = "val" if kind == S.SEARCH else "test"
        final |= {
            S.STATUS: S.OK, f"{prefix}_nll": scores["nll"], f"{prefix}_acc": scores["acc"],
            S.OBJECTIVE: fitted.objective, S.STEPS_DONE: fitted.steps_done,
            S.TRAIN_S: fitted.train_s, S.EVAL_S: eval_s,
            S.INFO: json.dumps(fitted.info, default=float),
        }
    except Exception as err:  # noqa: BLE001 - a failing trial is a record, not a crash
        final |= {S.STATUS: S.FAILED, S.ERROR: f"{type(err).__name__}: {err}"[:500],
                  "traceback": traceback.format_exc()[-2000:]}
    final["worker_wall_s"] = time.perf_counter() - started
    tune.report(final)


# ---------------------------------------------------------------- driver side


class Campaign:
    """Driver-side state of one (task, method, seed): trials, incumbent, compute spent."""

    def __init__(self, suite: str, task: Task, label: str, method: Method, seed: int,
                 budget: Budget, clock0: float, on_record=None) -> None:
        self.suite, self.task, self.label, self.method = suite, task, label, method
        self.seed, self.budget, self.clock0 = seed, budget, clock0
        self.on_record = on_record
        self.kinds: dict[str, tuple[str, dict, str | None]] = {}
        self.started: dict[str, float] = {}
        self.stopped_as: dict[str, str] = {}
        self.rows: list[dict] = []
        self.reports: list[dict] = []
        self.retrain_queue: list[tuple[dict, str]] = []
        self.best: tuple[float, str] | None = None
        self.spent_s = 0.0
        self.method_done = False
        self.worker_method = copy.deepcopy(method)  # unstarted: workers only call fit()
        method.start(Context(task, search_space(task), seed, budget.cap_s, budget.workers))

    @property
    def res(self) -> float:
        return self.budget.resources_per_worker

    def running_tuning(self) -> list[str]:
        done = {r[S.TRIAL_ID] for r in self.rows}
        return [t for t, (kind, _, _) in self.kinds.items()
                if kind != S.RETRAIN and t not in done]

    def tuning_spent(self) -> float:
        """Finished tuning trials' compute plus what running ones have used so far."""
        now = time.perf_counter()
        return self.spent_s + sum((now - self.started[t]) * self.res
                                  for t in self.running_tuning() if t in self.started)

    def over_cap(self) -> bool:
        return self.tuning_spent() >= self.budget.cap_s

    # -- called by the Tune adapters

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
        return None if self.running_tuning() else Searcher.FINISHED

    def _stalled(self):
        self.method_done = True  # waiting on nothing would spin forever
        return Searcher.FINISHED

    def trial_started(self, trial_id: str) -> None:
        self.started.setdefault(trial_id, time.perf_counter())

    def trial_report(self, trial_id: str, result: dict) -> str:
        if result.get("phase") != "epoch":
            return TrialScheduler.CONTINUE
        kind, _, _ = self.kinds[trial_id]
        metrics = {k: result[k] for k in (S.TRAIN_LOSS, S.VAL_NLL, S.VAL_ACC) if k in result}
        self.reports.append({S.SUITE: self.suite, S.TASK: self.task.name, S.METHOD: self.label,
                             S.SEED: self.seed, S.TRIAL_ID: trial_id, S.STEP: result[S.STEP],
                             S.EPOCH: None, **metrics})
        if kind != S.RETRAIN and self.over_cap():
            self.stopped_as[trial_id] = S.OVER_BUDGET
            return TrialScheduler.STOP
        if kind == S.SEARCH and self.method.on_report(trial_id, result[S.STEP], metrics):
            self.stopped_as[trial_id] = S.PRUNED
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def trial_complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        ended = time.perf_counter()
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
            if kind == S.SEARCH and status == S.OK and score is not None and (
                    self.best is None or score < self.best[0]):
                self.best = (score, trial_id)
                self.retrain_queue.append((hp, trial_id))
        if self.on_record:
            self.on_record(self, row)


class _MethodSearcher(Searcher):
    def __init__(self, campaign: Campaign) -> None:
        super().__init__()
        self.campaign = campaign

    def suggest(self, trial_id: str):
        return self.campaign.next_config(trial_id)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self.campaign.trial_complete(trial_id, result, error)


class _MethodScheduler(FIFOScheduler):
    def __init__(self, campaign: Campaign) -> None:
        super().__init__()
        self.campaign = campaign

    def on_trial_result(self, tune_controller, trial, result) -> str:
        return self.campaign.trial_report(trial.trial_id, result)


class _StartTimes(tune.Callback):
    def __init__(self, campaign: Campaign) -> None:
        self.campaign = campaign

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.campaign.trial_started(trial.trial_id)


def run_campaign(campaign: Campaign, storage: str) -> None:
    """Run every trial of one campaign on the Ray cluster ``ray.init`` connected to."""
    budget = campaign.budget
    spec = TrialSpec(campaign.task, campaign.seed, campaign.worker_method,
                     threads=max(1, int(budget.cpus_per_worker)))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec),
        {"cpu": budget.cpus_per_worker, "gpu": budget.gpus_per_worker})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_MethodSearcher(campaign), scheduler=_MethodScheduler(campaign),
            num_samples=-1, max_concurrent_trials=budget.workers, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{campaign.task.name}-{campaign.label}-{campaign.seed}",
            storage_path=storage, verbose=0, callbacks=[_StartTimes(campaign)],
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    tuner.fit()
