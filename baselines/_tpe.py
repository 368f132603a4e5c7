"""Optuna's TPE through its ask-and-tell interface, with and without pruning.

Pruning uses Optuna's own pruner (successive halving by default, or median) on the
per-epoch validation NLL that the harness reports while a trial trains; the machinery
(ask-and-tell, pruning deterministic under the harness's lag rule) is
``baselines._optuna``'s, shared with hyperband and asha.
"""

from __future__ import annotations

import optuna

from baselines._optuna import OptunaSearch, PruningSearch
from bench.contract.errors import BenchError
from bench.contract.method import Context
from bench.contract.options import require_int

# Pruners by name, made for a task's optimiser steps. Successive halving's min_resource is
# what its "auto" would estimate from a finished trial (last step / 100), fixed up front:
# "auto" keeps its first estimate, made whenever some trial first reports after another
# has finished, which is a matter of timing
PRUNERS = {
    "successive-halving": lambda steps: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=max(steps // 100, 1)),
    "median": lambda steps: optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
}


class TPESearch(OptunaSearch):
    name = "tpe"

    def __init__(self, trials: int = 20, startup_trials: int = 5) -> None:
        super().__init__(trials)
        self.startup_trials = startup_trials

    def start(self, context: Context) -> None:
        require_int("trials", self.trials, 1)
        require_int("startup_trials", self.startup_trials, 0)
        super().start(context)

    def _sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            seed=self.context_.seed, n_startup_trials=self.startup_trials,
            constant_liar=self.context_.workers > 1)  # parallel trials: don't propose twins


class PrunedTPESearch(PruningSearch, TPESearch):
    """TPE with Optuna's pruner on per-epoch validation NLL.

    The pruner's resource is the reported optimiser step. A trial is compared only with the trials heard before it was suggested, so the
    same seed prunes the same trials whatever order parallel trials report in."""

    name = "tpe-prune"

    def __init__(self, trials: int = 30, startup_trials: int = 5,
                 pruner: str = "successive-halving") -> None:
        TPESearch.__init__(self, trials, startup_trials)
        self.pruner = pruner

    def start(self, context: Context) -> None:
        if self.pruner not in PRUNERS:
            raise BenchError(f"unknown pruner {self.pruner!r}; known: {', '.join(PRUNERS)}")
        super().start(context)

    def _pruner(self) -> optuna.pruners.BasePruner:
        steps = getattr(self.context_.task, "steps", None)
        if steps is None:  # replayed records without per-epoch reports: nothing to prune on
            return optuna.pruners.NopPruner()  # (bench replay refuses them for tpe-prune)
        return PRUNERS[self.pruner](steps)
