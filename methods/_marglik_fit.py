"""Marginal-likelihood training (worker only; ``methods._marglik`` holds the methods'
options, prior groups and round schedule): the training loop's hook that runs an
estimator's hyperparameter rounds, :func:`marglik_fit`, and one run of a method's sweep
(``MarglikMethod.fit``). See ``methods._marglik`` for the loss and the schedules.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from bench.contract.method import FitData, Fitted, Report
from bench.contract.options import require_int
from bench.training.train import Hook, Loop, TrainConfig, fine_tune
from bench.worker.fit import epoch_metrics
from bench.zoo.data import Split
from bench.zoo.network import Network
from methods._marglik import (KEEPS, LIKELIHOODS, Estimator, PriorGroups, RoundSchedule,
                              check_choice)
from methods._sweep import centred_at_pretrained

if TYPE_CHECKING:
    from methods._marglik import MarglikMethod


class RegressionLoss(Hook):
    """Gaussian likelihood with known noise (constants left out, summed over outputs),
    for the regression form of the marginal-likelihood methods."""

    def __init__(self, sigma_noise: float) -> None:
        self.sigma_noise = sigma_noise

    def example_losses(self, loop, logits, y):
        return (logits - y).pow(2).sum(-1) / (2 * self.sigma_noise ** 2)


@dataclass
class MarglikRun:
    """What :func:`marglik_fit` returns."""

    keep: str = "final"
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per round
    best_round: int | None = None
    best_log_marglik: float | None = None
    best_precisions: dict[str, float] = field(default_factory=dict)
    precisions: dict[str, float] = field(default_factory=dict)  # of the returned network
    steps_done: int = 0
    stopped_early: bool = False
    final_loss: float = float("nan")
    train_s: float = 0.0  # MAP training steps
    hyper_s: float = 0.0  # hyperparameter rounds (curvature/Jacobians + Adam steps)

    @property
    def log_marglik(self) -> list[float]:
        return [h["log_marglik"] for h in self.history]

    @property
    def final_log_marglik(self) -> float | None:
        """The last round's value, if it is finite."""
        value = self.history[-1]["log_marglik"] if self.history else None
        return value if value is not None and math.isfinite(value) else None

    @property
    def returned_log_marglik(self) -> float | None:
        """The value at the network this run returns (by ``keep``)."""
        return self.best_log_marglik if self.keep == "best" else self.final_log_marglik


class MarglikHook(Hook):
    """The loop's part of marginal-likelihood training: the prior's penalty and the
    scheduled hyperparameter rounds (see the module docstring)."""

    def __init__(self, groups: PriorGroups, estimator: Estimator, schedule: RoundSchedule,
                 hyper_steps: int, hyper_lr: float, keep: str, train: Split, seed: int,
                 run: MarglikRun) -> None:
        self.groups, self.estimator, self.schedule = groups, estimator, schedule
        self.hyper_steps, self.keep, self.train, self.run = hyper_steps, keep, train, run
        self.optimizer = torch.optim.Adam([groups.log_delta], lr=hyper_lr)  # across rounds
        # subsets and outputs: a CPU generator, so every device draws the same ones
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.best_state: dict | None = None

    def on_start(self, loop: Loop) -> None:
        self.round_epochs = set(self.schedule.epochs(
            math.ceil(loop.total_steps / loop.steps_per_epoch)))

    def penalty(self, loop: Loop) -> torch.Tensor:
        return self.groups.penalty() / loop.n

    def on_epoch_end(self, loop: Loop) -> dict[str, Any]:
        if loop.epochs_done not in self.round_epochs and loop.step != loop.total_steps:
            return {}
        started = time.perf_counter()
        groups, run = self.groups, self.run
        model = loop.net.model
        before = groups.log_delta.detach().clone()
        record = self.estimator.round(loop.net, groups, self.train, self.optimizer,
                                      self.hyper_steps, self.generator)
        model.train()  # estimators evaluate the network in eval mode
        value = record.value
        if not math.isfinite(value):  # keep the last good precisions
            with torch.no_grad():
                groups.log_delta.copy_(before)
        precisions = groups.precisions()
        run.history.append({"step": loop.step, "epoch": loop.epoch, "log_marglik": value,
                            "steps": record.steps, "precisions": precisions,
                            "terms": record.terms})
        if math.isfinite(value) and (run.best_log_marglik is None
                                     or value > run.best_log_marglik):
            run.best_log_marglik, run.best_round = value, len(run.history) - 1
            run.best_precisions = precisions
            if self.keep == "best":
                self.best_state = copy.deepcopy(model.state_dict())  # buffers too
        run.hyper_s += time.perf_counter() - started
        fields: dict[str, Any] = {"log_marglik": value}
        fields |= {f"marglik_{k}": v for k, v in record.terms.items()}
        fields |= {f"precision_{g}": v for g, v in precisions.items()}
        return fields


def marglik_fit(net: Network, train: Split, estimator: Estimator, groups: PriorGroups, *,
                lr: float, steps: int, batch_size: int, seed: int,
                schedule: RoundSchedule = RoundSchedule(), hyper_steps: int = 10,
                hyper_lr: float = 0.1, keep: str = "final",
                likelihood: str = "classification", sigma_noise: float = 1.0,
                momentum: float = 0.9, nesterov: bool = True, clip_norm: float | None = 1.0,
                report: Report | None = None) -> MarglikRun:
    """MAP training on the shared loop with hyperparameter rounds (module docstring).

    The optimiser, schedule and seeding are ``bench.training.train.fine_tune``'s. The network is
    left at its final parameters (``keep="final"``) or at those of the round with the
    best value (``keep="best"``, BatchNorm statistics and precisions too).
    ``report(step, metrics)`` is called at every epoch end; True stops training."""
    check_choice("likelihood", likelihood, LIKELIHOODS)
    check_choice("keep", keep, KEEPS)
    schedule.check()
    require_int("hyper_steps", hyper_steps, 1)
    run = MarglikRun(keep=keep)
    hook = MarglikHook(groups, estimator, schedule, hyper_steps, hyper_lr, keep, train, seed,
                       run)
    hooks = [hook] + ([RegressionLoss(sigma_noise)] if likelihood == "regression" else [])
    config = TrainConfig(lr=lr, steps=steps, batch_size=batch_size, seed=seed,
                         momentum=momentum, nesterov=nesterov, clip_norm=clip_norm)
    callback = None if report is None else (lambda e: report(e.step, epoch_metrics(e)))
    result = fine_tune(net, None, train, config, callback=callback, hooks=hooks)
    run.steps_done, run.stopped_early = result.steps_done, result.stopped_early
    run.final_loss = result.final_loss
    run.train_s = result.train_s - run.hyper_s
    if keep == "best" and hook.best_state is not None:
        net.model.load_state_dict(hook.best_state)
        with torch.no_grad():
            groups.log_delta.copy_(torch.tensor(
                [math.log(run.best_precisions[g]) for g in groups.names],
                device=groups.log_delta.device))
    run.precisions = groups.precisions()
    net.model.train()
    return run


def fit_marglik_method(method: MarglikMethod, data: FitData, config: dict[str, float],
                       report: Report) -> Fitted:
    """``MarglikMethod.fit``: one run of ``method``'s sweep at ``config["lr"]`` on all N."""
    method.check_options()
    method.prepare()
    net = data.make_network()
    task = data.task
    groups = PriorGroups(net, method.groups, method.initial_prior_precision(),
                         centred_at_pretrained(task.regularizer))
    # float32 throughout, whatever the task's precision: the curvature, Jacobians and
    # log-determinants of the marginal likelihood need it, and so does the MAP point
    # they are taken at (docs/methods.md#gpu-speed-options)
    run = marglik_fit(net, data.train, method.make_estimator(), groups, lr=config["lr"],
                      steps=task.steps, batch_size=task.batch_size, seed=data.seed,
                      schedule=method.round_schedule(), hyper_steps=method.hyper_steps,
                      hyper_lr=method.hyper_lr, keep=method.keep, report=report)
    n = len(data.train[1])
    returned = run.returned_log_marglik
    objective = None if run.stopped_early or returned is None else -returned / n
    info = {
        "lr": config["lr"],
        "keep": method.keep,
        "schedule": method.schedule,
        "precisions": run.precisions,
        "best_precisions": run.best_precisions,
        "log_marglik": run.log_marglik,
        "log_marglik_steps": [h["steps"] for h in run.history],
        "log_marglik_terms": [h["terms"] for h in run.history],
        "hyper_rounds_at_step": [h["step"] for h in run.history],
        "best_round": run.best_round,
        "best_log_marglik": run.best_log_marglik,
        "final_log_marglik": run.final_log_marglik,
        "hyper_s": run.hyper_s,
        "train_s": run.train_s,
        "final_loss": run.final_loss,
        "n": n,
    }
    if task.precision != "float32":  # the default's records stay as they were
        info["precision"] = "float32"
        info["precision_note"] = (f"task precision {task.precision!r} ignored: {method.name} "
                                  "trains and fits in float32")
    return Fitted(net, objective=objective, info=info, steps_done=run.steps_done,
                  train_s=run.train_s + run.hyper_s, eval_s=0.0)
