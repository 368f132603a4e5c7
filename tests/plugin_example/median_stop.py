"""A pruning plugin: random search that stops a trial whose validation NLL at an epoch
report is worse than the median NLL at the same step of the trials it had heard finish
when it suggested that trial (what it has heard then does not depend on timing)."""

import numpy as np

from bench.contract.method import FINISHED, Method
from bench.contract.options import require_int


class MedianStop(Method):
    name = "median-stop"
    reports_validation = True  # every epoch report then carries val_nll and val_acc

    def __init__(self, trials=12, min_finished=2):
        self.trials = trials
        self.min_finished = min_finished

    def start(self, context):
        require_int("trials", self.trials, 1)  # bad options: a BenchError, one line
        require_int("min_finished", self.min_finished, 1)
        super().start(context)
        self.rng_ = np.random.default_rng(context.seed)
        self.left_ = self.trials
        self.curves_ = {}  # running trial -> {step: val_nll}
        self.finished_ = []  # curves of the trials heard to end ok, in trial order
        self.peers_ = {}  # trial -> how many of finished_ had been heard at its suggestion

    def suggest(self, trial_id):
        if self.left_ == 0:
            return FINISHED
        self.left_ -= 1
        self.peers_[trial_id] = len(self.finished_)  # its peers: the trials heard by now
        if self.context_.discrete:  # replaying records: only grid values have a run
            return {p.name: float(self.rng_.choice(p.grid)) for p in self.context_.space}
        return {p.name: float(np.exp(self.rng_.uniform(np.log(p.low), np.log(p.high))))
                if p.log else float(self.rng_.uniform(p.low, p.high))
                for p in self.context_.space}

    def on_report(self, trial_id, step, metrics):
        nll = metrics.get("val_nll")  # absent where the records hold no per-epoch values
        if nll is None:
            return False
        self.curves_.setdefault(trial_id, {})[step] = nll
        # compared only with the trials heard when it was suggested: results heard since
        # (and how far a running neighbour got) depend on how fast parallel trials ran
        heard = self.finished_[:self.peers_[trial_id]]
        peers = [curve[step] for curve in heard if step in curve]
        return len(peers) >= self.min_finished and nll > float(np.median(peers))

    def on_result(self, result):
        curve = self.curves_.pop(result.trial_id, {})
        if result.status == "ok":
            self.finished_.append(curve)
