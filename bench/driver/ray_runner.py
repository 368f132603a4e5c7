"""Runs a suite's campaigns on Ray Tune.

Methods stay Ray-free: a Tune ``Searcher`` asks the campaigns for configurations (their
methods' suggestions and the retraining of incumbents), a FIFO ``TrialScheduler`` passes
per-epoch reports to them (pruning; stopping trials once tuning compute reaches the cap),
and the trainable runs ``bench.worker.trial.execute_trial`` on a worker.
"""

from __future__ import annotations

import dataclasses
import socket

import ray
from ray import cloudpickle
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher

from bench.contract.protocol import Decision, EpochReport, FinalResult, TrialRequest, parse_result
from bench.driver.campaign import CampaignQueue
from bench.driver.budget import Budget
from bench.worker.trial import TrialSpec, execute_trial


def run_trial(config: dict, specs: list[TrialSpec]) -> None:
    """The Tune trainable. Ray stops a trial at a report, so ``emit`` never says stop.
    Records name the node as ``hostname/Ray node id`` (several nodes may share a host)."""
    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    request = TrialRequest.from_config(config)

    def emit(report: EpochReport) -> bool:
        tune.report(dataclasses.replace(report, node=node).to_result())
        return False

    final = execute_trial(request, specs[request.campaign], emit)
    tune.report(dataclasses.replace(final, node=node).to_result())


class _QueueSearcher(Searcher):
    def __init__(self, queue: CampaignQueue, faults: dict[tuple[int, str], str]) -> None:
        super().__init__()
        self.queue, self.faults = queue, faults

    def suggest(self, trial_id: str):
        """A Tune configuration, or None (wait) or Searcher.FINISHED."""
        request = self.queue.suggest(trial_id)
        if not isinstance(request, TrialRequest):
            return request
        fault = self.faults.get((request.campaign, request.trial))
        return dataclasses.replace(request, fault=fault).to_config()

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        """``result``: the trial's last result (its final one, or the report it was
        stopped at); None when it failed before reporting."""
        final = parse_result(result)
        self.queue.complete(trial_id, final if isinstance(final, FinalResult) else None, error)


class _QueueScheduler(FIFOScheduler):
    def __init__(self, queue: CampaignQueue) -> None:
        super().__init__()
        self.queue = queue

    def on_trial_result(self, tune_controller, trial, result) -> str:
        report = parse_result(result)
        if not isinstance(report, EpochReport):  # the final result: the trial ends anyway
            return Decision.CONTINUE.value
        return self.queue.report(trial.trial_id, report).value

    def on_trial_error(self, tune_controller, trial) -> None:
        """Tune calls this before the searcher hears of the failure: keep Ray's reason
        (an exception outside ``execute_trial``, or the worker process died)."""
        try:  # Tune has just written the exception beside the trial (not yet to storage)
            with open(trial.pickled_error_file, "rb") as f:
                error = cloudpickle.load(f)
        except (OSError, TypeError, ValueError, EOFError):
            return
        self.queue.failure_reason(trial.trial_id, error)


class _StartTimes(tune.Callback):
    def __init__(self, queue: CampaignQueue) -> None:
        self.queue = queue

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.queue.started(trial.trial_id)


def run_campaigns(queue: CampaignQueue, specs: list[TrialSpec], budget: Budget,
                  storage: str, faults: dict[tuple[int, str], str] | None = None) -> None:
    """Run every campaign of ``queue`` in one Tune experiment on the Ray cluster that
    ``ray.init`` connected to, reusing the worker processes from campaign to campaign.
    ``faults`` ({(campaign, trial): fault}, see ``bench.worker.faults``) are injected."""
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, specs=specs),
        {"cpu": budget.cpus_per_worker, "gpu": budget.gpus_per_worker})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_QueueSearcher(queue, faults or {}), scheduler=_QueueScheduler(queue),
            num_samples=-1, max_concurrent_trials=budget.workers, reuse_actors=True),
        run_config=tune.RunConfig(
            name="suite", storage_path=storage, verbose=0, callbacks=[_StartTimes(queue)],
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    tuner.fit()
