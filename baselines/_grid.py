"""Grid search: the full product grid, in a random order fixed by the seed.

``select_by`` names what picks the incumbent: ``"val_nll"`` (validation NLL, the default)
or ``"clml"`` (the highest conditional log marginal likelihood, a validation-free rule;
only replays of records that carry it: ``published:cifar10-convnext-clml``).

``report_validation = true`` evaluates every trial on its validation split at each epoch
and records it (reports.parquet), so that pruning methods can later be replayed on the
grid's own records (``bench replay``) at no training cost; it never changes what the grid
picks. ``retrain_all = true`` retrains every configuration, so any search method replayed
on the grid finds its incumbents' test accuracy."""

from __future__ import annotations

import itertools

import numpy as np

from bench.contract.errors import BenchError
from bench.contract.method import FINISHED, Context, Method
from bench.contract.options import require_bool, require_int

SELECTION_RULES = ("val_nll", "clml")


class GridSearch(Method):
    name = "grid"

    def __init__(self, max_trials: int | None = None, retrain_all: bool = False,
                 select_by: str = "val_nll", report_validation: bool = False) -> None:
        self.max_trials = max_trials
        self.retrain_all = retrain_all
        self.select_by = select_by
        self.report_validation = report_validation
        self.reports_validation = report_validation  # the contract's flag, per instance

    def start(self, context: Context) -> None:
        if self.max_trials is not None:
            require_int("max_trials", self.max_trials, 1)
        require_bool("retrain_all", self.retrain_all)
        require_bool("report_validation", self.report_validation)
        if self.select_by not in SELECTION_RULES:
            raise BenchError(f"select_by must be one of {', '.join(SELECTION_RULES)}, "
                             f"got {self.select_by!r}")
        if self.select_by == "clml" and not context.discrete:
            raise BenchError('select_by = "clml" needs recorded CLML: only in a replay of '
                             "published:cifar10-convnext-clml")
        super().start(context)
        names = [p.name for p in context.space]
        grid = [dict(zip(names, values))
                for values in itertools.product(*(p.grid for p in context.space))]
        order = np.random.default_rng(context.seed).permutation(len(grid))
        self.pending_ = [grid[i] for i in order[: self.max_trials]]

    def suggest(self, trial_id: str):
        return self.pending_.pop(0) if self.pending_ else FINISHED
