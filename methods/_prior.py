"""Shared machinery of the marginal-likelihood methods (``laplace-marglik``, ``ntk-marglik``).

- :class:`PriorGroups`: the L2-SP-form Gaussian prior theta_g ~ N(mu0_g, (1/delta_g)·I) with
  its precisions in groups: ``"two"`` (backbone around mu0, head around 0) or
  ``"layerwise"`` (one group per parameter tensor).
- :func:`marglik_fit`: MAP training with that prior, interleaved with hyperparameter rounds:
  every ``every_epochs`` epochs after ``burnin_epochs`` (and always at the last step) an
  *estimator* (full-data Laplace or the stochastic NTK bound) takes ``hyper_steps`` Adam
  steps on log delta maximising its log marginal likelihood; the parameters (and buffers)
  at the best marginal likelihood are kept.
- :class:`MarglikMethod`: the plugin side shared by both methods (learning-rate sweep,
  ``fit`` on all N, records).

MAP loss per step (METHODS.md 3b): mean NLL + (1/(2N))·sum_g delta_g·||theta_g − mu0_g||².
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.options import require_int, require_positive, require_positives
from bench.method import FINISHED, Context, FitData, Fitted, Method, Report
from bench.network import Network
from bench.train import Split, TrainingDiverged, batch_stream, optimizer_step

LIKELIHOODS = ("classification", "regression")
GROUPINGS = ("two", "layerwise")


class PriorGroups:
    """Prior precisions in groups over a network's parameters (all that require grad),
    in ``model.named_parameters()`` order. Backbone tensors are centred at ``net.mu0``,
    head tensors at 0. ``log_delta`` (one entry per group) is the learned
    hyperparameter; it requires grad."""

    def __init__(self, net: Network, grouping: str = "two", init: float = 1.0) -> None:
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
        self.means = {n: (torch.zeros_like(p) if net.is_head(n) else net.mu0[n]).detach()
                      for n, p in named}
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


def mean_nll(out: torch.Tensor, y: torch.Tensor, likelihood: str, sigma_noise: float):
    """Mean negative log likelihood (regression: Gaussian with known noise, constants kept
    out, summed over outputs)."""
    if likelihood == "classification":
        return F.cross_entropy(out, y)
    return (out - y).pow(2).sum(-1).mean() / (2 * sigma_noise ** 2)


class Estimator(Protocol):
    """One hyperparameter round at the current (fixed) network parameters."""

    def round(self, net: Network, groups: PriorGroups, train: Split,
              optimizer: torch.optim.Optimizer, steps: int,
              generator: torch.Generator) -> tuple[list[float], float]:
        """Take ``steps`` optimizer steps on ``groups.log_delta``; return the log marginal
        likelihood (or bound) at each step (before its update) and the round's value."""


@dataclass
class MarglikRun:
    """What :func:`marglik_fit` returns (the network is left at the best parameters)."""

    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per round
    best_round: int | None = None
    best_log_marglik: float | None = None
    precisions: dict[str, float] = field(default_factory=dict)  # at the best round
    steps_done: int = 0
    stopped_early: bool = False
    final_loss: float = float("nan")
    train_s: float = 0.0  # MAP training steps
    hyper_s: float = 0.0  # hyperparameter rounds (curvature/Jacobians + Adam steps)

    @property
    def log_marglik(self) -> list[float]:
        return [h["log_marglik"] for h in self.history]


def marglik_fit(net: Network, train: Split, estimator: Estimator, groups: PriorGroups, *,
                lr: float, steps: int, batch_size: int, seed: int, burnin_epochs: int,
                every_epochs: int, hyper_steps: int, hyper_lr: float,
                likelihood: str = "classification", sigma_noise: float = 1.0,
                momentum: float = 0.9, nesterov: bool = True, clip_norm: float | None = 1.0,
                report: Report | None = None) -> MarglikRun:
    """MAP training with hyperparameter rounds (see the module docstring).

    The optimiser and schedule are those of ``bench.train.fine_tune`` (SGD, Nesterov
    momentum, cosine decay over all ``steps``, gradient-norm clipping), seeded the same
    way (``torch.manual_seed(seed)`` and a generator for the batches). A round happens at
    the end of epoch e when e >= burnin_epochs and e % every_epochs == 0 (laplace-torch's
    ``marglik_training`` rule), and always after the last step. ``report(step, metrics)``
    is called at every epoch end; True stops training."""
    if likelihood not in LIKELIHOODS:
        raise BenchError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if every_epochs < 1 or burnin_epochs < 0 or hyper_steps < 1:
        raise BenchError("need every_epochs >= 1, burnin_epochs >= 0 and hyper_steps >= 1")
    x, y = train
    n = len(x)
    model = net.model
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    hyper_generator = torch.Generator().manual_seed(seed + 7919)  # subsets / outputs
    batch = min(batch_size, n)
    batches = batch_stream(n, batch, generator)
    steps_per_epoch = max(1, math.ceil(n / batch))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    hyper_optimizer = torch.optim.Adam([groups.log_delta], lr=hyper_lr)  # kept across rounds
    run = MarglikRun()
    best_state = None
    model.train()
    step = 0
    while step < steps:
        started = time.perf_counter()
        idx = next(batches)
        loss = mean_nll(model(x[idx]), y[idx], likelihood, sigma_noise) + groups.penalty() / n
        optimizer_step(loss, optimizer, schedule, params, clip_norm)
        run.final_loss = float(loss.detach())
        step += 1
        run.train_s += time.perf_counter() - started
        if not math.isfinite(run.final_loss):
            raise TrainingDiverged(f"training loss is {run.final_loss} at step {step}")
        if step % steps_per_epoch and step != steps:
            continue
        epoch = math.ceil(step / steps_per_epoch)
        if step == steps or (epoch >= burnin_epochs and epoch % every_epochs == 0):
            started = time.perf_counter()
            before = groups.log_delta.detach().clone()
            values, value = estimator.round(net, groups, train, hyper_optimizer, hyper_steps,
                                            hyper_generator)
            model.train()  # estimators evaluate the network in eval mode
            if not math.isfinite(value):  # keep the last good precisions
                with torch.no_grad():
                    groups.log_delta.copy_(before)
            run.history.append({"step": step, "epoch": step / steps_per_epoch,
                                "log_marglik": value, "steps": values,
                                "precisions": groups.precisions()})
            if math.isfinite(value) and (run.best_log_marglik is None
                                         or value > run.best_log_marglik):
                run.best_log_marglik, run.best_round = value, len(run.history) - 1
                run.precisions = groups.precisions()
                best_state = copy.deepcopy(model.state_dict())  # buffers (BatchNorm) too
            run.hyper_s += time.perf_counter() - started
        metrics = {"train_loss": run.final_loss}
        if run.history and math.isfinite(run.history[-1]["log_marglik"]):
            metrics["log_marglik"] = run.history[-1]["log_marglik"]
        if report is not None and report(step, metrics) and step < steps:
            run.stopped_early = True
            break
    run.steps_done = step
    if best_state is not None:
        model.load_state_dict(best_state)
        with torch.no_grad():
            groups.log_delta.copy_(torch.tensor(
                [math.log(run.precisions[g]) for g in groups.names]))
    model.train()
    return run


class MarglikMethod(Method):
    """Base of the two marginal-likelihood methods: a learning-rate sweep (``lrs``, in
    order) of runs on all N (no validation split). A run's objective is
    −(best round's log marginal likelihood)/N, the value at the parameters it returns;
    the harness keeps the run with the lowest. Subclasses set ``name``, store their
    options in ``__init__`` and build the estimator in ``make_estimator()``."""

    uses_validation: ClassVar[bool] = False

    def start(self, context: Context) -> None:
        require_positives("lrs", self.lrs)
        check_choice("groups", self.groups, GROUPINGS)
        require_int("burnin_epochs", self.burnin_epochs, 0)
        require_int("every_epochs", self.every_epochs, 1)
        require_int("hyper_steps", self.hyper_steps, 1)
        require_positive("hyper_lr", self.hyper_lr)
        require_positive("prior_prec_init", self.prior_prec_init)
        self.make_estimator()  # validates the estimator's options
        super().start(context)
        self.pending_ = [float(lr) for lr in self.lrs]

    def suggest(self, trial_id: str):
        if not self.pending_:
            return FINISHED
        return {"lr": self.pending_.pop(0)}

    def make_estimator(self) -> Estimator:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self) -> None:
        """One-time work outside the timed loop (e.g. slow imports on a fresh worker)."""

    def fit(self, data: FitData, config: dict[str, float], report: Report) -> Fitted:
        self.prepare()
        net = data.make_network()
        groups = PriorGroups(net, self.groups, self.prior_prec_init)
        task = data.task
        run = marglik_fit(net, data.train, self.make_estimator(), groups, lr=config["lr"],
                          steps=task.steps, batch_size=task.batch_size, seed=data.seed,
                          burnin_epochs=self.burnin_epochs, every_epochs=self.every_epochs,
                          hyper_steps=self.hyper_steps, hyper_lr=self.hyper_lr,
                          report=report)
        n = len(data.train[1])
        objective = None if run.best_log_marglik is None else -run.best_log_marglik / n
        info = {
            "lr": config["lr"],
            "precisions": run.precisions or groups.precisions(),
            "log_marglik": run.log_marglik,
            "log_marglik_steps": [h["steps"] for h in run.history],
            "hyper_rounds_at_step": [h["step"] for h in run.history],
            "best_round": run.best_round,
            "best_log_marglik": run.best_log_marglik,
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

