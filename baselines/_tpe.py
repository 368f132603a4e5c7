"""Optuna's TPE through its ask-and-tell interface, with and without pruning.

Pruning uses Optuna's own pruner (successive halving by default, or median) on the
per-epoch validation NLL that the harness reports while a trial trains.
"""

from __future__ import annotations

import optuna

from bench.errors import BenchError
from bench.method import FINISHED, Context, Method, Result
from bench.schema import OK, PRUNED

PRUNERS = {
    "successive-halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
}


class TPESearch(Method):
    name = "tpe"

    def __init__(self, trials: int = 20, startup_trials: int = 5) -> None:
        self.trials = trials
        self.startup_trials = startup_trials

    def _pruner(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()

    def start(self, context: Context) -> None:
        super().start(context)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(
            seed=context.seed, n_startup_trials=self.startup_trials,
            constant_liar=context.workers > 1)  # parallel trials: don't propose twins
        self.study_ = optuna.create_study(direction="minimize", sampler=sampler,
                                          pruner=self._pruner())
        self.distributions_ = {
            p.name: optuna.distributions.CategoricalDistribution(p.grid) if context.discrete
            else optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
            for p in context.space}
        self.running_: dict[str, optuna.trial.Trial] = {}
        self.asked_ = 0

    def suggest(self, trial_id: str):
        if self.asked_ >= self.trials:
            return FINISHED
        self.asked_ += 1
        trial = self.study_.ask(self.distributions_)
        self.running_[trial_id] = trial
        return dict(trial.params)

    def on_result(self, result: Result) -> None:
        trial = self.running_.pop(result.trial_id, None)
        if trial is None:
            return
        if result.status == OK and result.score is not None:
            self.study_.tell(trial, result.score)
        elif result.status == PRUNED:
            self.study_.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study_.tell(trial, state=optuna.trial.TrialState.FAIL)


class PrunedTPESearch(TPESearch):
    name = "tpe-prune"
    reports_validation = True

    def __init__(self, trials: int = 30, startup_trials: int = 5,
                 pruner: str = "successive-halving") -> None:
        super().__init__(trials, startup_trials)
        if pruner not in PRUNERS:  # refused when the suite is read, not mid-run
            raise BenchError(f"unknown pruner {pruner!r}; known: {', '.join(PRUNERS)}")
        self.pruner = pruner

    def _pruner(self) -> optuna.pruners.BasePruner:
        return PRUNERS[self.pruner]()

    def on_report(self, trial_id: str, step: int, metrics: dict[str, float]) -> bool:
        trial = self.running_.get(trial_id)
        if trial is None or "val_nll" not in metrics:
            return False
        trial.report(metrics["val_nll"], step)
        return trial.should_prune()
