"""Random search: the grid's space, sampled log-uniformly (uniformly where not log); in a
discrete space (a replay of recorded runs), uniformly among each parameter's grid values."""

from __future__ import annotations

import numpy as np

from bench.method import FINISHED, Context, Method
from bench.options import require_int
from bench.space import Param


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

    def suggest(self, trial_id: str):
        if self.suggested_ >= self.trials:
            return FINISHED
        self.suggested_ += 1
        return {p.name: sample(p, self.rng_, self.context_.discrete) for p in self.context_.space}
