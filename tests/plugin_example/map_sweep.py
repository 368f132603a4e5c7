"""A learned-method plugin: one L2-SP run on all N per learning rate, the lowest MAP
objective (training NLL plus the penalty) selects, with no validation data."""

import torch
from torch.nn import functional as F

from bench.contract.errors import BenchError
from bench.contract.method import FINISHED, Method
from bench.contract.options import require_positive, require_positives


class MapSweep(Method):
    """Learned learning rate: a run on all N per learning rate, picked by its MAP objective.

    Each run trains with the shared loop at one learning rate and the method's own L2-SP
    strengths, then scores itself on the training set: mean NLL + (alpha/2)·||w_bb − mu0||²
    + (beta/2)·||w_head||², the loss the run minimised (lower is better)."""

    name = "map-sweep"
    uses_validation = False  # learned: runs train on all N; fit gets no validation data

    def __init__(self, lrs=(0.03, 0.01), alpha=1e-3, beta=1e-3):
        self.lrs = lrs  # constructors only store options
        self.alpha = alpha
        self.beta = beta

    def start(self, context):
        require_positives("lrs", self.lrs)  # bad options: a BenchError, one line
        require_positive("alpha", self.alpha)
        require_positive("beta", self.beta)
        if context.task.regularizer != "l2sp":
            raise BenchError(f"{self.name} trains with L2-SP; task {context.task.name} "
                             f"regularizes with {context.task.regularizer!r}")
        lr = next(p for p in context.space if p.name == "lr")
        outside = [v for v in self.lrs if not lr.low <= v <= lr.high]
        if outside:
            raise BenchError(f"lrs {outside[0]} is outside the task's learning-rate range "
                             f"[{lr.low:g}, {lr.high:g}]")
        super().start(context)
        self.pending_ = [float(v) for v in self.lrs]

    def suggest(self, trial_id):
        # a learned method suggests only what it does not learn: here the learning rate
        return {"lr": self.pending_.pop(0)} if self.pending_ else FINISHED

    def fit(self, data, config, report):
        # runs on a worker, on an unstarted copy of the method: use options, not state
        hp = {**config, "alpha": self.alpha, "beta": self.beta}
        fitted = data.standard_fit(data, hp, report, False)  # objective None: ours below
        net, (x, y) = fitted.network, data.train  # all N, prepared, on the worker's device
        was_training = net.model.training
        net.model.eval()
        with torch.no_grad():
            nll = sum(F.cross_entropy(net.model(x[i:i + 256]), y[i:i + 256], reduction="sum")
                      for i in range(0, len(y), 256)) / len(y)
            drift = sum(((p - net.mu0[n]) ** 2).sum() for n, p in net.backbone_parameters())
            head = sum((p ** 2).sum() for _, p in net.head_parameters())
        net.model.train(was_training)
        fitted.objective = float(nll + 0.5 * self.alpha * drift + 0.5 * self.beta * head)
        fitted.info |= {"train_nll": float(nll), "drift": float(drift)}  # recorded
        return fitted
