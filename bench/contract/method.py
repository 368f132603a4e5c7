"""The tuning-method plugin contract.

A method proposes trials (``suggest``), hears their per-epoch reports (``on_report``, which
may prune) and final results (``on_result``); for learned-hyperparameter methods it also
says how one run trains (``fit``). It never imports Ray and never writes files: the
harness runs its trials on a worker pool (or replays them) and keeps the records.

Constructors only store options (scikit-learn style); ``start`` sets up the state, whose
attributes end in ``_``. Every hook has a harmless default, so a plugin overrides only
what it needs. Plugins register under the entry-point group ``bench.methods``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:  # the contract imports neither torch nor the training code
    from bench.zoo.network import Network
    from bench.contract.space import Param
    from bench.zoo.task import Task
    from bench.zoo.data import Split

FINISHED = "FINISHED"  # suggest(): no more trials from this method


@dataclass(frozen=True)
class Context:
    """What a method knows when it starts: the task, the search space (learning rate and
    the regularizer's hyperparameters), its seed, and the budget it runs under."""

    task: Task
    space: tuple[Param, ...]
    seed: int
    cap_s: float  # compute cap (in the budget's unit) for this (task, method, seed)
    workers: int
    #: only each parameter's grid values may be suggested (replaying recorded runs)
    discrete: bool = False

    @classmethod
    def of(cls, task: Task, seed: int, budget, discrete: bool = False) -> Context:
        """The context of ``task``'s campaign for ``seed`` under ``budget`` (a
        ``bench.driver.budget.Budget``): the cap is the task's own if it sets one."""
        return cls(task, search_space(task), seed, task.cap_s or budget.cap_s, budget.workers,
                   discrete)


@dataclass(frozen=True)
class Result:
    """A finished trial as a method sees it. ``score`` is what the method minimises:
    validation NLL for search trials (minus the CLML with ``select_by = "clml"``), the
    method's own objective for learned runs; None if the trial failed, was pruned or
    stopped."""

    trial_id: str
    config: dict[str, float]
    status: str
    score: float | None
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:  # a metric not measured is left out, never None or NaN
        object.__setattr__(self, "metrics", {k: v for k, v in self.metrics.items()
                                             if v is not None and v == v})


@dataclass(frozen=True)
class FitData:
    """What ``fit`` trains on. Search trials get the 80% train split and (for per-epoch
    reports) the validation split; learned methods get all N and no validation data.
    The worker hands over its tools too: ``make_network`` builds a fresh pretrained
    network, ``standard_fit`` is the harness's fine-tuning loop at a configuration with
    the task's regularizer (``bench.worker.fit.standard_fit``), what ``Method.fit`` runs."""

    task: Task
    seed: int
    train: Split
    validation: Split | None
    num_classes: int
    make_network: Callable[[], Network]
    standard_fit: Callable[..., Fitted] | None = None


@dataclass
class Fitted:
    """What ``fit`` returns: the trained network (the harness evaluates it), the method's
    own objective if it has one (lower is better), and anything worth recording."""

    network: Network
    objective: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    steps_done: int = 0
    train_s: float = 0.0  # seconds in training steps
    eval_s: float = 0.0  # seconds in evaluations during training


Report = Callable[[int, dict[str, float]], bool]  # (step, metrics) -> stop?


class Method:
    """Base class of tuning methods: set ``name``, override ``suggest`` (and what else is
    needed). Options are keyword arguments of the subclass's constructor, stored as is."""

    name: ClassVar[str] = ""
    #: trials are scored on a validation split and the incumbent retrained on all N
    uses_validation: ClassVar[bool] = True
    #: evaluate on the validation split every epoch, for ``on_report`` to prune on
    reports_validation: ClassVar[bool] = False
    #: retrain every finished configuration, not only new incumbents (needed by the
    #: grid's subset bootstrap, which may pick any configuration)
    retrain_all: bool = False

    def start(self, context: Context) -> None:
        """Called once before any suggestion; set up state here (attributes end in _)."""
        self.context_ = context

    def searched_space(self) -> tuple[Param, ...] | None:
        """The space of this method's suggestions if not ``context.space`` (None, the
        default): a method that tunes hyperparameters of its own (``regsl`` tunes layer-wise
        radii on any task) names them here. Asked once, after ``start``; the harness checks
        every suggestion against it."""
        return None

    def suggest(self, trial_id: str) -> dict[str, float] | str | None:
        """The configuration to run as ``trial_id``, ``FINISHED``, or None to wait for
        running trials' results first. Trial ids are ``t0000``, ``t0001``, ... in the order
        of suggestions; when ``t{j}`` is asked for, the method has heard the results of
        exactly the trials before ``t{j - workers + 1}`` (so runs are reproducible)."""
        return FINISHED

    def on_report(self, trial_id: str, step: int, metrics: dict[str, float]) -> bool:
        """A running trial's evaluation; return True to stop (prune) it."""
        return False

    def on_result(self, result: Result) -> None:
        """A trial finished (any status). Results come in trial order."""

    def fit(self, data: FitData, config: dict[str, float], report: Report) -> Fitted:
        """Train one trial (runs on a worker). Default: the shared fine-tuning loop with
        the task's regularizer at ``config`` (``lr`` plus its hyperparameters)."""
        if data.standard_fit is None:
            raise RuntimeError("this FitData carries no standard_fit: the worker passes "
                               "bench.worker.fit.standard_fit")
        return data.standard_fit(data, config, report, self.reports_validation)


def search_space(task: Task) -> tuple[Param, ...]:
    """The learning rate plus the task's regularizer's hyperparameters."""
    return task.search_space()
