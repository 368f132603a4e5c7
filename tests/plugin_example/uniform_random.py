"""A complete tuning-method plugin: random search over the harness's search space."""

import numpy as np

from bench.contract.method import FINISHED, Method


class UniformRandom(Method):
    name = "uniform-random"

    def __init__(self, trials=10):
        self.trials = trials  # constructors only store options

    def start(self, context):
        super().start(context)  # keeps context_: task, space, seed, cap, workers, discrete
        self.rng_ = np.random.default_rng(context.seed)
        self.left_ = self.trials

    def suggest(self, trial_id):
        if self.left_ == 0:
            return FINISHED
        self.left_ -= 1
        return {p.name: self._draw(p) for p in self.context_.space}

    def _draw(self, p):
        if self.context_.discrete:  # replaying records: only grid values have a run
            return float(self.rng_.choice(p.grid))
        if p.log:
            return float(np.exp(self.rng_.uniform(np.log(p.low), np.log(p.high))))
        return float(self.rng_.uniform(p.low, p.high))
