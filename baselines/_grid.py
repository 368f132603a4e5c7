"""Grid search: the full product grid, in a random order fixed by the seed."""

from __future__ import annotations

import itertools

import numpy as np

from bench.method import FINISHED, Context, Method
from bench.options import require_bool, require_int


class GridSearch(Method):
    name = "grid"

    def __init__(self, max_trials: int | None = None, retrain_all: bool = False) -> None:
        self.max_trials = max_trials
        self.retrain_all = retrain_all

    def start(self, context: Context) -> None:
        if self.max_trials is not None:
            require_int("max_trials", self.max_trials, 1)
        require_bool("retrain_all", self.retrain_all)
        super().start(context)
        names = [p.name for p in context.space]
        grid = [dict(zip(names, values))
                for values in itertools.product(*(p.grid for p in context.space))]
        order = np.random.default_rng(context.seed).permutation(len(grid))
        self.pending_ = [grid[i] for i in order[: self.max_trials]]

    def suggest(self, trial_id: str):
        return self.pending_.pop(0) if self.pending_ else FINISHED
