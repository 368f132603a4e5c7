"""Where MARS-SP's radii bind (issue 28): train each reference task's network without any
regularizer, at each learning rate of its grid, and print how far it moves from its
pretrained weights in MARS-SP's norms. A radius binds where the unconstrained run goes past
it: lambda_bb below a layer's largest row L1 distance (or a BatchNorm's largest gain
change), lambda_head below the head's largest row L1 norm.

    .venv/bin/python scripts/mars_binding.py [SUITE [TASK]]   # default: suites/default.toml
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from bench.driver.suite import load_suite
from bench.training.train import TrainConfig, fine_tune
from bench.zoo.regularizers import BN_EPS, Regularizer


@torch.no_grad()
def distances(net) -> dict:
    """Largest row L1 distance from mu0 of each backbone conv/linear weight, the head's
    largest row L1 norm, and the largest BatchNorm gain change."""
    params = dict(net.model.named_parameters())
    rows = []
    for name in net.layer_weights:
        if net.is_head(name) or not params[name].requires_grad:
            continue
        t = params[name] - net.mu0[name]
        rows.append(float(t.reshape(t.shape[0], -1).abs().sum(1).max()))
    head = next(params[n] for n in net.layer_weights if net.is_head(n))
    gains = torch.cat([(bn.weight / (bn.running_var + BN_EPS).sqrt()
                        - net.mu0[n] / (net.running_var0[n] + BN_EPS).sqrt()).abs()
                       for n, bn in net.batchnorms] or [torch.zeros(1)])
    return {"layers": len(rows), "bb_median": statistics.median(rows), "bb_max": max(rows),
            "head": float(head.abs().sum(1).max()), "bn_median": float(gains.median()),
            "bn_max": float(gains.max()), "bn_over_10": float((gains > 10).float().mean())}


def main(suite_path: str = "suites/default.toml", only: str = "", seed: int = 0) -> None:
    """``only``: tasks whose name holds it (all by default)."""
    suite = load_suite(suite_path)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {suite_path}, seed "
          f"{seed}; no regularizer")
    print(f"{'task':45} {'lr':>6} {'layers':>6} {'row L1 median':>13} {'row L1 max':>10} "
          f"{'head row L1':>11} {'BN gain median':>14} {'max':>8} {'> 10':>6} {'s':>5}")
    for task in suite.tasks:
        if only and only not in task.name:
            continue
        data = task.load(seed)
        lrs = next(p.grid for p in task.search_space() if p.name == "lr")
        for lr in lrs:
            started = time.perf_counter()
            net = data.network()
            fine_tune(net, Regularizer(), data.train,
                      TrainConfig(lr=lr, steps=task.steps, batch_size=task.batch_size, seed=seed))
            d = distances(net)
            print(f"{task.name:45} {lr:6g} {d['layers']:6d} {d['bb_median']:13.2f} "
                  f"{d['bb_max']:10.2f} {d['head']:11.2f} {d['bn_median']:14.3f} "
                  f"{d['bn_max']:8.1f} {d['bn_over_10']:6.1%} "
                  f"{time.perf_counter() - started:5.0f}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
