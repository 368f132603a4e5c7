"""Gaussian-process Bayesian optimisation: Optuna's GPSampler (a Matern-5/2 GP, log
expected improvement) over the task's space on the log scale, as the DE-ELBo study's BO
searched log10 alpha, log10 beta and log10 lr."""

from __future__ import annotations

import optuna

from baselines._optuna import OptunaSearch
from bench.contract.method import Context
from bench.contract.options import require_int


class GPBOSearch(OptunaSearch):
    """Bayesian optimisation with a Gaussian process and log expected improvement
    (Optuna's GPSampler); the first ``startup_trials`` are drawn at random.

    Log-scale parameters (lr and the regularizer strengths) are searched as their logs.
    In a replay's discrete space each parameter is searched as its position among its
    grid values, sorted: for a log-spaced grid that is its log10 up to an offset (a grid
    value 0 sits one step below the smallest); the GP then keeps the order of the values,
    which a categorical would lose. Trials running beside a suggestion enter the
    acquisition as pending points (Optuna's), so parallel workers are not given twins."""

    name = "gp-bo"

    def __init__(self, trials: int = 20, startup_trials: int = 10) -> None:
        super().__init__(trials)
        self.startup_trials = startup_trials

    def start(self, context: Context) -> None:
        require_int("trials", self.trials, 1)
        require_int("startup_trials", self.startup_trials, 1)
        super().start(context)

    def _sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(seed=self.context_.seed,
                                         n_startup_trials=self.startup_trials)

    def _distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        if not self.context_.discrete:
            return super()._distributions()
        self.grids_ = {p.name: sorted(p.grid) for p in self.context_.space}
        return {name: optuna.distributions.IntDistribution(0, len(grid) - 1)
                for name, grid in self.grids_.items()}

    def _config(self, trial: optuna.trial.Trial) -> dict[str, float]:
        if not self.context_.discrete:
            return dict(trial.params)
        return {name: float(self.grids_[name][index]) for name, index in trial.params.items()}
