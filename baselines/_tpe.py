"""Optuna's TPE through its ask-and-tell interface, with and without pruning.

Pruning uses Optuna's own pruner (successive halving by default, or median) on the
per-epoch validation NLL that the harness reports while a trial trains.
"""

from __future__ import annotations

import optuna

from bench.errors import BenchError
from bench.method import FINISHED, Context, Method, Result
from bench.options import require_int
from bench.schema import OK, PRUNED

# Pruners by name, made for a task's optimiser steps. Successive halving's min_resource is
# what its "auto" would estimate from a finished trial (last step / 100), fixed up front:
# "auto" keeps its first estimate, made whenever some trial first reports after another
# has finished, which is a matter of timing
PRUNERS = {
    "successive-halving": lambda steps: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=max(steps // 100, 1)),
    "median": lambda steps: optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
}


class TPESearch(Method):
    name = "tpe"

    def __init__(self, trials: int = 20, startup_trials: int = 5) -> None:
        self.trials = trials
        self.startup_trials = startup_trials

    def _pruner(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()

    def start(self, context: Context) -> None:
        require_int("trials", self.trials, 1)
        require_int("startup_trials", self.startup_trials, 0)
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


class _HeardStudy:
    """The study as one pruning decision sees it: the trial being decided and the trials
    whose results the method had heard when that trial was suggested. Trials running
    beside it are hidden, so how far they got (a matter of timing) cannot sway it: the
    pruning counterpart of the harness's lagged, in-order results."""

    def __init__(self, study: optuna.Study, numbers: frozenset[int]) -> None:
        self._study, self._numbers = study, numbers

    def get_trials(self, deepcopy: bool = True, states=None) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states)
                if t.number in self._numbers]

    def __getattr__(self, name: str):  # direction, storage, ...: the study's own
        return getattr(self._study, name)


class PrunedTPESearch(TPESearch):
    """TPE with Optuna's pruner on per-epoch validation NLL.

    A trial is compared only with the trials heard before it was suggested
    (``_HeardStudy``), and the pruner keeps no state of its own, so the same seed prunes
    the same trials whatever order parallel trials report in."""

    name = "tpe-prune"
    reports_validation = True

    def __init__(self, trials: int = 30, startup_trials: int = 5,
                 pruner: str = "successive-halving") -> None:
        super().__init__(trials, startup_trials)
        self.pruner = pruner

    def start(self, context: Context) -> None:
        if self.pruner not in PRUNERS:
            raise BenchError(f"unknown pruner {self.pruner!r}; known: {', '.join(PRUNERS)}")
        super().start(context)
        self.visible_: dict[str, frozenset[int]] = {}

    def _pruner(self) -> optuna.pruners.BasePruner:
        return PRUNERS[self.pruner](self.context_.task.steps)

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if isinstance(config, dict):  # heard = told, so finished in the study
            heard = {t.number for t in self.study_.get_trials(deepcopy=False)
                     if t.state.is_finished()}
            self.visible_[trial_id] = frozenset(heard | {self.running_[trial_id].number})
        return config

    def on_report(self, trial_id: str, step: int, metrics: dict[str, float]) -> bool:
        trial = self.running_.get(trial_id)
        if trial is None or "val_nll" not in metrics:
            return False
        trial.report(metrics["val_nll"], step)
        view = _HeardStudy(self.study_, self.visible_[trial_id])
        frozen = next(t for t in view.get_trials(deepcopy=False) if t.number == trial.number)
        return self.study_.pruner.prune(view, frozen)
