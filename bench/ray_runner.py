"""Runs one campaign on Ray Tune.

The method stays Ray-free: a Tune ``Searcher`` asks the campaign for configurations (its
method's suggestions and the retraining of incumbents), a FIFO ``TrialScheduler`` passes
per-epoch reports to it (pruning; stopping trials once tuning compute reaches the cap), and
the trainable runs ``bench.trial.execute_trial`` on a worker.
"""

from __future__ import annotations

from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher

from bench.campaign import Campaign
from bench.trial import TrialSpec, execute_trial


def run_trial(config: dict, spec: TrialSpec) -> None:
    """The Tune trainable. Ray stops a trial at a report, so ``emit`` never says stop."""
    final = execute_trial(config, spec, lambda result: tune.report(result) and False)
    tune.report(final)


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
                     threads=max(1, int(budget.cpus_per_worker)), gpus=budget.gpus_per_worker)
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
