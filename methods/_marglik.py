"""The marginal-likelihood loop shared by ``laplace-marglik`` and ``ntk-marglik``.

- :class:`PriorGroups`: the L2-SP-form Gaussian prior theta_g ~ N(mu0_g, (1/delta_g)·I) with
  its precisions in groups: ``"two"`` (backbone around mu0, head around 0) or
  ``"layerwise"`` (one group per parameter tensor). With the ``wd`` family every group is
  centred at 0.
- :class:`RoundSchedule`: when hyperparameter rounds happen. ``"late"`` (default): the
  first after ``burnin`` (a fraction of the run, 0.8) and ``rounds`` in all, evenly
  spaced to the last step; ``"online"`` (the authors'): every ``every_epochs`` epochs
  after ``burnin_epochs``, and after the last step.
- :class:`MarglikHook`: the training loop's part (``bench.train.fine_tune``): the prior's
  penalty, and at the end of a scheduled epoch a round of an *estimator* (full-data
  Laplace or the stochastic NTK bound) taking ``hyper_steps`` Adam steps on log delta that
  maximise its log marginal likelihood. Each round's precisions, value and terms go to
  the epoch's report.
- :func:`marglik_fit`: MAP training with rounds; returns the final network
  (``keep="final"``, as the DE-ELBo study and ntk-marglik do) or the best round's
  (``keep="best"``, laplace-torch's ``marglik_training`` behaviour).
- :class:`MarglikMethod`: the plugin side shared by both methods (learning-rate sweep,
  ``fit`` on all N, records).

MAP loss per step (docs/methods.md#online-laplace): mean NLL +
(1/(2N))·sum_g delta_g·||theta_g − mu0_g||².

Why "late" by default: on the short runs a CPU affords, rounds from epoch 1 feed
far-from-converged curvature back into training (measured on small-cnn, N = 100: head
precision 37 -> 2,650 and accuracy 57% -> 37%), while rounds late in the run select the
learning rate as well as the grid (issue 13's measurements).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from bench.errors import BenchError
from bench.fit import epoch_metrics
from bench.method import FitData, Fitted, Report
from bench.network import Network
from bench.options import is_number, require_int, require_positive
from bench.train import Hook, Loop, Split, TrainConfig, fine_tune
from methods._sweep import LearnedMethod, centred_at_pretrained

LIKELIHOODS = ("classification", "regression")
GROUPINGS = ("two", "layerwise")
SCHEDULES = ("late", "online")
KEEPS = ("final", "best")


class PriorGroups:
    """Prior precisions in groups over a network's parameters (all that require grad),
    in ``model.named_parameters()`` order. Backbone tensors are centred at ``net.mu0``,
    head tensors at 0. ``log_delta`` (one entry per group) is the learned
    hyperparameter; it requires grad."""

    def __init__(self, net: Network, grouping: str = "two", init: float = 1.0,
                 centred: bool = True) -> None:
        if grouping not in GROUPINGS:
            raise BenchError(f"groups must be one of {GROUPINGS}, got {grouping!r}")
        if not (math.isfinite(init) and init > 0):
            raise BenchError(f"prior_prec_init must be a positive number, got {init}")
        self.net = net
        named = [(n, p) for n, p in net.model.named_parameters() if p.requires_grad]
        self.param_names = [n for n, _ in named]
        self.sizes = [p.numel() for _, p in named]
        if grouping == "two":
            kinds = ["head" if net.is_head(n) else "backbone" for n in self.param_names]
            self.names = [g for g in ("backbone", "head") if g in kinds]
            self.group_of = [self.names.index(k) for k in kinds]
        else:
            self.names = list(self.param_names)
            self.group_of = list(range(len(self.param_names)))
        self.index = torch.tensor(self.group_of, dtype=torch.long)
        self.means = {n: (net.mu0[n] if centred and not net.is_head(n)
                          else torch.zeros_like(p)).detach() for n, p in named}
        self.log_delta = torch.full((len(self.names),), math.log(init), requires_grad=True)

    # -- values
    def delta(self) -> torch.Tensor:
        """Current precisions per group (differentiable in log_delta)."""
        return self.log_delta.exp()

    def precisions(self) -> dict[str, float]:
        return {g: float(v) for g, v in zip(self.names, self.delta().detach())}

    def per_tensor(self, delta: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
        """Precision of each parameter tensor (``names``: a subset, in model order)."""
        out = delta[self.index]
        if names is None:
            return out
        pos = {n: i for i, n in enumerate(self.param_names)}
        return out[torch.tensor([pos[n] for n in names], dtype=torch.long)]

    def per_element(self, delta: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
        """Precision of each scalar parameter, flattened in model order."""
        names = self.param_names if names is None else names
        size = dict(zip(self.param_names, self.sizes))
        return self.per_tensor(delta, names).repeat_interleave(
            torch.tensor([size[n] for n in names]))

    def prior_mean(self, names: list[str] | None = None) -> torch.Tensor:
        """Flat prior mean ([mu0, 0]) of ``names`` (default all), in model order."""
        names = self.param_names if names is None else names
        return torch.cat([self.means[n].flatten() for n in names])

    def squared_distances(self) -> torch.Tensor:
        """||theta_g − mu_g||² per group at the current parameters (no grad)."""
        params = dict(self.net.model.named_parameters())
        with torch.no_grad():
            per_tensor = torch.stack([(params[n] - self.means[n]).pow(2).sum()
                                      for n in self.param_names])
            return torch.zeros(len(self.names)).index_add_(0, self.index, per_tensor)

    def penalty(self) -> torch.Tensor:
        """½·sum_g delta_g·||theta_g − mu_g||² (delta held fixed; grad flows to theta)."""
        params = dict(self.net.model.named_parameters())
        delta = self.delta().detach()
        terms = [0.5 * delta[g] * (params[n] - self.means[n]).pow(2).sum()
                 for n, g in zip(self.param_names, self.group_of)]
        return torch.stack(terms).sum()

    def scatter(self, delta: torch.Tensor) -> torch.Tensor:
        """sum_g delta_g·||theta_g − mu_g||² (differentiable in delta)."""
        return (delta * self.squared_distances()).sum()


class RegressionLoss(Hook):
    """Gaussian likelihood with known noise (constants left out, summed over outputs),
    for the regression form of the marginal-likelihood methods."""

    def __init__(self, sigma_noise: float) -> None:
        self.sigma_noise = sigma_noise

    def example_losses(self, loop, logits, y):
        return (logits - y).pow(2).sum(-1) / (2 * self.sigma_noise ** 2)


@dataclass(frozen=True)
class RoundRecord:
    """What an estimator's round returns: the value at each hyper-step (before its
    update), the round's value at its final precisions, and that value's terms."""

    steps: list[float]
    value: float
    terms: dict[str, float] = field(default_factory=dict)


class Estimator(Protocol):
    """One hyperparameter round at the current (fixed) network parameters."""

    def round(self, net: Network, groups: PriorGroups, train: Split,
              optimizer: torch.optim.Optimizer, steps: int,
              generator: torch.Generator) -> RoundRecord:
        """Take ``steps`` optimizer steps on ``groups.log_delta``."""


@dataclass(frozen=True)
class RoundSchedule:
    """When hyperparameter rounds happen, in whole epochs of a run (see the module
    docstring); a round always follows the last step."""

    kind: str = "late"
    burnin: float = 0.8  # late: fraction of the run before the first round
    rounds: int = 3  # late: rounds in all, the last after the final step
    burnin_epochs: int = 1  # online: B
    every_epochs: int = 2  # online: F

    def check(self) -> None:
        check_choice("schedule", self.kind, SCHEDULES)
        if not (is_number(self.burnin) and 0 <= self.burnin < 1):
            raise BenchError(f"burnin must be a fraction of the run in [0, 1), "
                             f"got {self.burnin!r}")
        require_int("rounds", self.rounds, 1)
        require_int("burnin_epochs", self.burnin_epochs, 0)
        require_int("every_epochs", self.every_epochs, 1)

    def epochs(self, total_epochs: int) -> list[int]:
        """The epochs (1-based) at whose end a round happens."""
        if self.kind == "online":
            chosen = {e for e in range(1, total_epochs + 1)
                      if e >= self.burnin_epochs and e % self.every_epochs == 0}
        else:
            first = min(total_epochs, max(1, math.ceil(self.burnin * total_epochs)))
            if self.rounds == 1:
                chosen = set()
            else:
                span = (total_epochs - first) / (self.rounds - 1)
                chosen = {math.floor(first + k * span + 0.5) for k in range(self.rounds - 1)}
        return sorted(chosen | {total_epochs})


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
        self.generator = torch.Generator().manual_seed(seed + 7919)  # subsets / outputs
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

    The optimiser, schedule and seeding are ``bench.train.fine_tune``'s. The network is
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
                [math.log(run.best_precisions[g]) for g in groups.names]))
    run.precisions = groups.precisions()
    net.model.train()
    return run


class MarglikMethod(LearnedMethod):
    """Base of the two marginal-likelihood methods: a learning-rate sweep (``lrs``, in
    order) of runs on all N (no validation split). A run's objective is −(log marginal
    likelihood)/N at the network it returns (the last round's with ``keep="final"``, the
    best round's with ``keep="best"``); the harness keeps the run with the lowest.
    Subclasses set ``name``, store their options in ``__init__`` and build the estimator
    in ``make_estimator()``."""

    def round_schedule(self) -> RoundSchedule:
        return RoundSchedule(self.schedule, self.burnin, self.rounds, self.burnin_epochs,
                             self.every_epochs)

    def check_options(self) -> None:
        check_choice("groups", self.groups, GROUPINGS)
        check_choice("keep", self.keep, KEEPS)
        self.round_schedule().check()
        require_int("hyper_steps", self.hyper_steps, 1)
        require_positive("hyper_lr", self.hyper_lr)
        require_positive("prior_prec_init", self.prior_prec_init)
        self.make_estimator()  # validates the estimator's options

    def make_estimator(self) -> Estimator:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self) -> None:
        """One-time work outside the timed loop (e.g. slow imports on a fresh worker)."""

    def fit(self, data: FitData, config: dict[str, float], report: Report) -> Fitted:
        self.check_options()
        self.prepare()
        net = data.make_network()
        task = data.task
        groups = PriorGroups(net, self.groups, self.prior_prec_init,
                             centred_at_pretrained(task.regularizer))
        run = marglik_fit(net, data.train, self.make_estimator(), groups, lr=config["lr"],
                          steps=task.steps, batch_size=task.batch_size, seed=data.seed,
                          schedule=self.round_schedule(), hyper_steps=self.hyper_steps,
                          hyper_lr=self.hyper_lr, keep=self.keep, report=report)
        n = len(data.train[1])
        returned = run.returned_log_marglik
        objective = None if run.stopped_early or returned is None else -returned / n
        info = {
            "lr": config["lr"],
            "keep": self.keep,
            "schedule": self.schedule,
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
        return Fitted(net, objective=objective, info=info, steps_done=run.steps_done,
                      train_s=run.train_s + run.hyper_s, eval_s=0.0)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BenchError(f"{name} must be one of {choices}, got {value!r}")
