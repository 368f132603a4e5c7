"""A complete tuning-method plugin: random search over the harness's search space."""

import numpy as np

from bench.method import FINISHED, Method


class UniformRandom(Method):
    name = "uniform-random"

    def __init__(self, trials=10):
        self.trials = trials  # constructors only store options

    def start(self, context):
        super().start(context)  # keeps context_: task, space, seed, cap, workers
        self.rng_ = np.random.default_rng(context.seed)
        self.left_ = self.trials

    def suggest(self, trial_id):
        if self.left_ == 0:
            return FINISHED
        self.left_ -= 1
        return {p.name: float(np.exp(self.rng_.uniform(np.log(p.low), np.log(p.high))))
                if p.log else float(self.rng_.uniform(p.low, p.high))
                for p in self.context_.space}
