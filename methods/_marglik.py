"""What ``laplace-marglik`` and ``ntk-marglik`` share, on the driver's side and the worker's.

- :class:`PriorGroups`: the L2-SP-form Gaussian prior theta_g ~ N(mu0_g, (1/delta_g)·I) with
  its precisions in groups: ``"two"`` (backbone around mu0, head around 0) or
  ``"layerwise"`` (one group per parameter tensor). With the ``wd`` family every group is
  centred at 0.
- :class:`RoundSchedule`: when hyperparameter rounds happen. ``"late"`` (default): the
  first after ``burnin`` (a fraction of the run, 0.8) and ``rounds`` in all, evenly
  spaced to the last step; ``"online"`` (the authors'): every ``every_epochs`` epochs
  after ``burnin_epochs``, and after the last step.
- :class:`MarglikMethod`: the plugin side shared by both methods (options, learning-rate
  sweep, ``fit`` on all N, records).
- ``methods._marglik_fit`` (worker side, imported by ``fit``): the training loop's hook
  (the prior's penalty, and at the end of a scheduled epoch a round of an *estimator*,
  full-data Laplace or the stochastic NTK bound, taking ``hyper_steps`` Adam steps on log
  delta that maximise its log marginal likelihood) and ``marglik_fit``, MAP training with
  rounds that returns the final network (``keep="final"``) or the best round's
  (``keep="best"``).

MAP loss per step (docs/methods.md#online-laplace): mean NLL +
(1/(2N))·sum_g delta_g·||theta_g − mu0_g||².

Why "late" by default: on the short runs a CPU affords, rounds from epoch 1 feed
far-from-converged curvature back into training (measured on small-cnn, N = 100: head
precision 37 -> 2,650 and accuracy 57% -> 37%), while rounds late in the run select the
learning rate as well as the grid (issue 13's measurements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch

from bench.contract.errors import BenchError
from bench.contract.method import FitData, Fitted, Report
from bench.contract.options import is_number, require_int, require_positive
from bench.zoo.data import Split
from bench.zoo.network import Network
from methods._sweep import LearnedMethod

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
        # every tensor of the prior lives on the parameters' device (CUDA or CPU)
        self.device = named[0][1].device if named else torch.device("cpu")
        self.index = torch.tensor(self.group_of, dtype=torch.long, device=self.device)
        self.means = {n: (net.mu0[n] if centred and not net.is_head(n)
                          else torch.zeros_like(p)).detach() for n, p in named}
        self.log_delta = torch.full((len(self.names),), math.log(init), device=self.device,
                                    requires_grad=True)

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
        return out[torch.tensor([pos[n] for n in names], dtype=torch.long, device=out.device)]

    def per_element(self, delta: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
        """Precision of each scalar parameter, flattened in model order."""
        names = self.param_names if names is None else names
        size = dict(zip(self.param_names, self.sizes))
        repeats = [size[n] for n in names]  # output_size: no device sync on CUDA
        return self.per_tensor(delta, names).repeat_interleave(
            torch.tensor(repeats, device=delta.device), output_size=sum(repeats))

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
            return torch.zeros(len(self.names), device=per_tensor.device).index_add_(
                0, self.index, per_tensor)

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


class MarglikMethod(LearnedMethod):
    """Base of the two marginal-likelihood methods: a learning-rate sweep (``lrs``, in
    order) of runs on all N (no validation split). A run's objective is −(log marginal
    likelihood)/N at the network it returns (the last round's with ``keep="final"``, the
    best round's with ``keep="best"``); the harness keeps the run with the lowest.
    Subclasses set ``name``, store their options in ``__init__`` and build the estimator
    in ``make_estimator()``."""

    #: the initial prior precision of each schedule, where ``prior_prec_init`` is None
    PRIOR_PREC_INIT: ClassVar[dict[str, float]] = {"late": 1.0, "online": 1.0}

    def round_schedule(self) -> RoundSchedule:
        return RoundSchedule(self.schedule, self.burnin, self.rounds, self.burnin_epochs,
                             self.every_epochs)

    def initial_prior_precision(self) -> float:
        """``prior_prec_init``, or where it is None (unset) the schedule's own."""
        if self.prior_prec_init is not None:
            return self.prior_prec_init
        return self.PRIOR_PREC_INIT[self.schedule]

    def check_options(self) -> None:
        check_choice("groups", self.groups, GROUPINGS)
        check_choice("keep", self.keep, KEEPS)
        self.round_schedule().check()
        require_int("hyper_steps", self.hyper_steps, 1)
        require_positive("hyper_lr", self.hyper_lr)
        if self.prior_prec_init is not None:  # None: the schedule's (PRIOR_PREC_INIT)
            require_positive("prior_prec_init", self.prior_prec_init)
        self.make_estimator()  # validates the estimator's options

    def make_estimator(self) -> Estimator:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self) -> None:
        """One-time work outside the timed loop (e.g. slow imports on a fresh worker)."""

    def fit(self, data: FitData, config: dict[str, float], report: Report) -> Fitted:
        from methods._marglik_fit import fit_marglik_method  # worker side: the training loop

        return fit_marglik_method(self, data, config, report)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BenchError(f"{name} must be one of {choices}, got {value!r}")
