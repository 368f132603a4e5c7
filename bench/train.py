"""The one fine-tuning loop every method shares.

SGD with Nesterov momentum, cosine learning-rate decay over all steps, gradient-norm
clipping, a regularizer's penalty and projection, evaluation every so many steps reported
to a plain callback (a callable; returning True stops training, e.g. for pruning). Time is
split into training, evaluation and other. Deterministic for a given seed on the CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.metrics import evaluate
from bench.network import Network
from bench.regularizers import Regularizer

Split = tuple[torch.Tensor, torch.Tensor]  # prepared images, labels


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimiser, schedule, batch, seed and report interval."""

    lr: float
    steps: int
    batch_size: int = 32
    seed: int = 0
    momentum: float = 0.9
    nesterov: bool = True
    clip_norm: float | None = 1.0
    report_every: int | None = None  # steps between evaluations; None: once per epoch

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise BenchError(f"lr must be a positive number, got {self.lr}")
        if self.steps < 1:
            raise BenchError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise BenchError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.report_every is not None and self.report_every < 1:
            raise BenchError(f"report_every must be >= 1, got {self.report_every}")


@dataclass(frozen=True)
class Report:
    """Evaluation at one point of training: ``metrics[split] = {"acc": ..., "nll": ...}``."""

    step: int
    epoch: float
    train_loss: float
    metrics: dict[str, dict[str, float]]
    train_s: float
    eval_s: float


@dataclass
class Timer:
    """Seconds spent in training, evaluation and everything else."""

    train_s: float = 0.0
    eval_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.started

    @property
    def other_s(self) -> float:
        return max(0.0, self.wall_s - self.train_s - self.eval_s)


@dataclass(frozen=True)
class TrainResult:
    metrics: dict[str, dict[str, float]]  # at the end (or at the step training stopped)
    reports: list[Report]
    steps_done: int
    stopped_early: bool
    final_loss: float
    train_s: float
    eval_s: float
    other_s: float
    wall_s: float


Callback = Callable[[Report], "bool | None"]


def batch_stream(n: int, batch_size: int, generator: torch.Generator):
    """Endless full batches of indices, drawn from consecutive random permutations."""
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(n, generator=generator)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


def optimizer_step(loss, optimizer, schedule, params, clip_norm: float | None) -> None:
    """Backward, clip the gradient norm, step the optimiser and the learning-rate schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    schedule.step()


def fine_tune(
    net: Network,
    regularizer: Regularizer,
    train: Split,
    config: TrainConfig,
    eval_sets: dict[str, Split] | None = None,
    callback: Callback | None = None,
    timer: Timer | None = None,
) -> TrainResult:
    """Train ``net`` in place on ``train``; evaluate on ``eval_sets`` at every report."""
    timer = timer or Timer()
    eval_sets = eval_sets or {}
    x, y = train
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    batches = batch_stream(len(x), min(config.batch_size, len(x)), generator)
    steps_per_epoch = max(1, math.ceil(len(x) / config.batch_size))
    report_every = config.report_every or steps_per_epoch
    params = [p for p in net.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    net.model.train()

    reports: list[Report] = []
    stopped = False
    loss_value = float("nan")
    step = 0
    while step < config.steps and not stopped:
        started = time.perf_counter()
        idx = next(batches)
        loss = F.cross_entropy(net.model(x[idx]), y[idx])
        penalty = regularizer.penalty(net)
        if penalty is not None:
            loss = loss + penalty
        optimizer_step(loss, optimizer, schedule, params, config.clip_norm)
        with torch.no_grad():
            regularizer.project(net)
        loss_value = float(loss.detach())
        step += 1
        timer.train_s += time.perf_counter() - started
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"training loss is {loss_value} at step {step}")
        if step % report_every == 0 or step == config.steps:
            report = _report(net, step, step / steps_per_epoch, loss_value, eval_sets, timer)
            reports.append(report)
            stopped = bool(callback and callback(report)) and step < config.steps

    final = reports[-1].metrics if reports else {}
    return TrainResult(final, reports, step, stopped, loss_value, timer.train_s, timer.eval_s,
                       timer.other_s, timer.wall_s)


def _report(net, step, epoch, loss, eval_sets, timer: Timer) -> Report:
    started = time.perf_counter()
    metrics = {name: evaluate(net.model, *split) for name, split in eval_sets.items()}
    timer.eval_s += time.perf_counter() - started
    return Report(step, epoch, loss, metrics, timer.train_s, timer.eval_s)
