"""Random search: the grid's space, sampled log-uniformly (uniformly where not log); in a
discrete space (a replay of recorded runs), uniformly among the grid's configurations and
without replacement, so no configuration is drawn twice (the search ends when all were)."""

from __future__ import annotations

import math

import numpy as np

from bench.contract.method import FINISHED, Context, Method
from bench.contract.options import require_int
from bench.contract.space import Param


def sample(param: Param, rng: np.random.Generator, discrete: bool = False) -> float:
    if discrete:
        return float(param.grid[rng.integers(len(param.grid))])
    if param.log:
        return float(np.exp(rng.uniform(np.log(param.low), np.log(param.high))))
    return float(rng.uniform(param.low, param.high))


class RandomSearch(Method):
    name = "random"

    def __init__(self, trials: int = 20) -> None:
        self.trials = trials

    def start(self, context: Context) -> None:
        require_int("trials", self.trials, 1)
        super().start(context)
        self.rng_ = np.random.default_rng(context.seed)
        self.suggested_ = 0
        self.drawn_: set[tuple[float, ...]] = set()
        # distinct configurations of a discrete space (each parameter's distinct values)
        self.configurations_ = math.prod(len(set(p.grid)) for p in context.space)

    def suggest(self, trial_id: str):
        if self.suggested_ >= self.trials:
            return FINISHED
        space = self.context_.space
        if not self.context_.discrete:
            self.suggested_ += 1
            return {p.name: sample(p, self.rng_) for p in space}
        if len(self.drawn_) >= self.configurations_:
            return FINISHED  # every configuration drawn once
        while True:  # rejection: uniform among the configurations not drawn yet
            values = tuple(sample(p, self.rng_, discrete=True) for p in space)
            if values not in self.drawn_:
                break
        self.drawn_.add(values)
        self.suggested_ += 1
        return dict(zip((p.name for p in space), values))
