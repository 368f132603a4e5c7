"""Multi-fidelity search: Hyperband and asynchronous successive halving (ASHA), with the
epoch as the resource. Trials report validation NLL every epoch; Optuna's pruners stop
the ones that rank poorly at a rung. Deterministic under the harness's lag rule (see
``baselines._optuna``): a trial competes only with the trials heard before it was
suggested.
"""

from __future__ import annotations

import optuna

from baselines._optuna import EpochPruningSearch, task_epochs
from bench.contract.errors import BenchError
from bench.contract.method import Context
from bench.contract.options import require_int


def require_resources(task, min_resource, reduction_factor) -> None:
    require_int("min_resource", min_resource, 1)
    require_int("reduction_factor", reduction_factor, 2)
    epochs = task_epochs(task)
    if epochs is not None and min_resource > epochs:
        raise BenchError(f"min_resource {min_resource} exceeds the {epochs} epochs of task "
                         f"{task.name}")


class HyperbandSearch(EpochPruningSearch):
    """Hyperband (Li et al., JMLR 2018) through Optuna's HyperbandPruner: brackets of
    successive halving, each starting at a larger resource, over the task's epochs.

    Rungs of bracket s are at ``min_resource * reduction_factor**(s + k)`` epochs; the
    brackets number ``floor(log_eta(epochs / min_resource)) + 1`` and a trial's bracket
    is drawn by Optuna from a hash of the study name and the trial number, weighted by
    each bracket's budget. Within its bracket a trial goes on from a rung if its NLL
    ranks in the top ``1/reduction_factor`` there (ASHA's rule, as ``asha``). With the
    TPE sampler, TPE learns from the trial's own bracket only (Optuna's design)."""

    name = "hyperband"

    def __init__(self, trials: int = 30, sampler: str = "random", startup_trials: int = 5,
                 min_resource: int = 1, reduction_factor: int = 3) -> None:
        super().__init__(trials, sampler, startup_trials)
        self.min_resource = min_resource
        self.reduction_factor = reduction_factor

    def start(self, context: Context) -> None:
        require_resources(context.task, self.min_resource, self.reduction_factor)
        super().start(context)
        # brackets fixed from the start (Optuna sets them up at the first report, and until
        # then puts every trial in bracket 0, which TPE's bracket-wise history would see)
        if isinstance(self.study_.pruner, optuna.pruners.HyperbandPruner):
            self.study_.pruner._try_initialization(self.study_)  # noqa: SLF001

    def _epoch_pruner(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.HyperbandPruner(min_resource=self.min_resource,
                                              max_resource=self.epochs_,
                                              reduction_factor=self.reduction_factor)


class ASHASearch(EpochPruningSearch):
    """Asynchronous successive halving (ASHA; Li et al., MLSys 2020) in its early-stopping
    form, through Optuna's SuccessiveHalvingPruner (as Ray Tune's ASHAScheduler).

    Rungs are at ``min_resource * reduction_factor**(min_early_stopping_rate + k)`` epochs.
    When a trial reaches a rung, its validation NLL joins the rung's values; it goes on
    if it ranks in the top ``floor(n / reduction_factor)`` of the rung's n values (while
    ``n < reduction_factor``: only if it is the best), else it is stopped for good.
    Li et al.'s Algorithm 2 instead pauses every trial at its rung and promotes it later,
    once enough trials have arrived for it to rank in the top 1/eta; that needs trials that
    can be resumed from a checkpoint, which the harness does not do. The rung's values are
    those of the trials heard before this one was suggested (the lag rule), not of trials
    running beside it."""

    name = "asha"

    def __init__(self, trials: int = 30, sampler: str = "random", startup_trials: int = 5,
                 min_resource: int = 1, reduction_factor: int = 4,
                 min_early_stopping_rate: int = 0) -> None:
        super().__init__(trials, sampler, startup_trials)
        self.min_resource = min_resource
        self.reduction_factor = reduction_factor
        self.min_early_stopping_rate = min_early_stopping_rate

    def start(self, context: Context) -> None:
        require_resources(context.task, self.min_resource, self.reduction_factor)
        require_int("min_early_stopping_rate", self.min_early_stopping_rate, 0)
        super().start(context)

    def _epoch_pruner(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=self.min_resource, reduction_factor=self.reduction_factor,
            min_early_stopping_rate=self.min_early_stopping_rate)
