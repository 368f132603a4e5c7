"""The one fine-tuning loop every method runs on, with hooks.

SGD with Nesterov momentum, cosine learning-rate decay over all steps, gradient-norm
clipping, evaluation every so many steps reported to a plain callback (a callable;
returning True stops training, e.g. for pruning). Time is split into training,
evaluation and other. Deterministic for a given seed on the CPU.

What differs between methods is a :class:`Hook` (Lightning-style: every method a no-op,
so a hook overrides only what it needs): a regularizer's penalty and projection, the
data-emphasized ELBo's sampled forward pass and KL term, a marginal-likelihood
hyperparameter round at the end of an epoch, self-labeling's corrected targets and
reweighted losses. The search methods' standard fit, DE-ELBo and the marginal-likelihood
methods all train through :func:`fine_tune`.

Precision (``TrainConfig.precision``): ``"float32"`` (the default) is IEEE float32 on every
device (TF32 is switched off for CUDA's convolutions and matrix products, see
:func:`use_exact_float32`); ``"bf16"`` runs each step's forward pass and loss under
``torch.autocast`` to bfloat16 (parameters, gradients, optimiser, penalties and evaluation
stay float32).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F

from bench.contract.errors import BenchError
from bench.contract.options import require_precision
from bench.training.metrics import evaluate

if TYPE_CHECKING:  # the loop trains any network with any regularizer the zoo makes
    from bench.zoo.data import Split
    from bench.zoo.network import Network
    from bench.zoo.regularizers import Regularizer


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def use_exact_float32() -> None:
    """IEEE float32 on CUDA too: PyTorch lets cuDNN's float32 convolutions use TF32 (a
    10-bit mantissa) on Ampere and later GPUs by default; the harness's float32 is exact,
    so results agree across devices. Process-wide (a worker's later evaluations too)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def autocast(precision: str, device: torch.device):
    """The context a training step's forward pass and loss run in."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    precision: str = "float32"  # or "bf16": autocast of each step's forward and loss

    def __post_init__(self) -> None:
        require_precision("precision", self.precision)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise BenchError(f"lr must be a positive number, got {self.lr}")
        if self.steps < 1:
            raise BenchError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise BenchError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.report_every is not None and self.report_every < 1:
            raise BenchError(f"report_every must be >= 1, got {self.report_every}")


@dataclass(frozen=True)
class Evaluation:
    """One evaluation during training: ``metrics[split] = {"acc": ..., "nll": ...}``;
    ``train_loss`` is the last step's loss (data term plus penalties); ``fields`` holds
    ``train_nll`` (the mean data term over the last epoch) and the hooks' per-epoch values
    since the previous evaluation."""

    step: int
    epoch: float
    train_loss: float
    metrics: dict[str, dict[str, float]]
    train_s: float
    eval_s: float
    fields: dict[str, Any] = field(default_factory=dict)


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
    reports: list[Evaluation]
    steps_done: int
    stopped_early: bool
    final_loss: float
    train_s: float
    eval_s: float
    other_s: float
    wall_s: float


Callback = Callable[[Evaluation], "bool | None"]


@dataclass
class Loop:
    """What hooks see of a running loop. ``step`` counts the steps done."""

    net: Network
    x: torch.Tensor
    y: torch.Tensor
    config: TrainConfig
    steps_per_epoch: int
    step: int = 0
    loss: float = float("nan")  # the last step's training loss

    @property
    def n(self) -> int:
        return len(self.x)

    @property
    def total_steps(self) -> int:
        return self.config.steps

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    @property
    def epochs_done(self) -> int:
        """Whole epochs done (the last, partial epoch counts when training ends)."""
        return math.ceil(self.step / self.steps_per_epoch)


class Hook:
    """Extension points of :func:`fine_tune`; each default does nothing.

    Per step: ``forward`` (the first hook returning a tensor gives the logits, else the
    model's own forward), ``targets`` (labels for the batch; ``idx`` are indices into the
    training set), ``example_losses`` (per-example losses; default cross-entropy), then
    ``data_loss`` (their reduction; default the mean) plus every ``penalty``; after the
    optimiser step ``after_step`` (under no_grad: projections). At the end of every epoch
    (and after the last step) ``on_epoch_end`` may do work (a hyperparameter round) and
    returns values for the next evaluation's report."""

    def parameters(self) -> list[torch.Tensor]:
        """Extra tensors trained by the loop's optimiser beside the network's."""
        return []

    def on_start(self, loop: Loop) -> None:
        """Before the first step (after seeding)."""

    def forward(self, loop: Loop, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def targets(self, loop: Loop, idx: torch.Tensor, y: torch.Tensor,
                logits: torch.Tensor) -> torch.Tensor:
        return y

    def example_losses(self, loop: Loop, logits: torch.Tensor,
                       y: torch.Tensor) -> torch.Tensor | None:
        return None

    def data_loss(self, loop: Loop, losses: torch.Tensor,
                  idx: torch.Tensor) -> torch.Tensor | None:
        return None

    def penalty(self, loop: Loop) -> torch.Tensor | None:
        return None

    def after_step(self, loop: Loop) -> None:
        """After each optimiser step, under no_grad."""

    def on_epoch_end(self, loop: Loop) -> dict[str, Any]:
        return {}


class RegularizerHook(Hook):
    """A regularizer family's penalty and projection."""

    def __init__(self, regularizer: Regularizer) -> None:
        self.regularizer = regularizer

    def penalty(self, loop: Loop) -> torch.Tensor | None:
        return self.regularizer.penalty(loop.net)

    def after_step(self, loop: Loop) -> None:
        self.regularizer.project(loop.net)


def _overrides(hook: Hook, name: str) -> bool:
    return getattr(type(hook), name) is not getattr(Hook, name)


@dataclass(frozen=True)
class _Hooks:
    """The hooks that take part in a step's data term, by role."""

    forwards: list[Hook]
    relabels: list[Hook]
    per_example: list[Hook]


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
    regularizer: Regularizer | None,
    train: Split,
    config: TrainConfig,
    eval_sets: dict[str, Split] | None = None,
    callback: Callback | None = None,
    timer: Timer | None = None,
    hooks: Sequence[Hook] = (),
) -> TrainResult:
    """Train ``net`` in place on ``train``; evaluate on ``eval_sets`` at every report."""
    timer = timer or Timer()
    eval_sets = eval_sets or {}
    hooks = ([RegularizerHook(regularizer)] if regularizer is not None else []) + list(hooks)
    x, y = train
    use_exact_float32()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    batches = batch_stream(len(x), min(config.batch_size, len(x)), generator)
    steps_per_epoch = max(1, math.ceil(len(x) / config.batch_size))
    report_every = config.report_every or steps_per_epoch
    loop = Loop(net, x, y, config, steps_per_epoch)
    params = [p for p in net.model.parameters() if p.requires_grad]
    params += [p for hook in hooks for p in hook.parameters()]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    by_role = _Hooks(
        forwards=[h for h in hooks if _overrides(h, "forward")],
        relabels=[h for h in hooks if _overrides(h, "targets")],
        per_example=[h for h in hooks if _overrides(h, "example_losses")
                     or _overrides(h, "data_loss")])
    for hook in hooks:
        hook.on_start(loop)
    net.model.train()

    reports: list[Evaluation] = []
    fields: dict[str, Any] = {}
    epoch_nll, epoch_steps = 0.0, 0
    stopped = False
    while loop.step < config.steps and not stopped:
        started = time.perf_counter()
        idx = next(batches).to(x.device)  # drawn on the CPU: the same batches everywhere
        xb, yb = x[idx], y[idx]  # indexing keeps channels_last batches channels_last
        with autocast(config.precision, x.device):
            loss = _data_loss(net, loop, by_role, xb, yb, idx).float()
        data_loss = loss.detach()
        for hook in hooks:
            penalty = hook.penalty(loop)
            if penalty is not None:
                loss = loss + penalty
        optimizer_step(loss, optimizer, schedule, params, config.clip_norm)
        loop.loss = float(loss.detach())
        loop.step += 1
        with torch.no_grad():
            for hook in hooks:
                hook.after_step(loop)
        last = loop.step == config.steps
        if not math.isfinite(loop.loss):
            timer.train_s += time.perf_counter() - started
            raise TrainingDiverged(f"training loss is {loop.loss} at step {loop.step}")
        epoch_nll = epoch_nll + data_loss  # a tensor: no extra device sync per step
        epoch_steps += 1
        if loop.step % steps_per_epoch == 0 or last:
            # the data term alone (a penalty may jump when a prior is re-estimated)
            fields["train_nll"] = float(epoch_nll) / epoch_steps
            epoch_nll, epoch_steps = 0.0, 0
            for hook in hooks:
                fields |= hook.on_epoch_end(loop)
        timer.train_s += time.perf_counter() - started
        if loop.step % report_every == 0 or last:
            report = _evaluate(net, loop, eval_sets, timer, fields)
            fields = {}
            reports.append(report)
            stopped = bool(callback and callback(report)) and not last

    final = reports[-1].metrics if reports else {}
    return TrainResult(final, reports, loop.step, stopped, loop.loss, timer.train_s,
                       timer.eval_s, timer.other_s, timer.wall_s)


def _data_loss(net, loop: Loop, hooks: _Hooks, xb, yb, idx) -> torch.Tensor:
    """One step's forward pass and data term (what ``bf16`` runs under autocast)."""
    logits = next((out for h in hooks.forwards if (out := h.forward(loop, xb)) is not None),
                  None)
    if logits is None:
        logits = net.model(xb)
    for hook in hooks.relabels:
        yb = hook.targets(loop, idx, yb, logits)
    if not hooks.per_example:  # the common case, kept as one fused call
        return F.cross_entropy(logits, yb)
    losses = next((ls for h in hooks.per_example
                   if (ls := h.example_losses(loop, logits, yb)) is not None), None)
    if losses is None:
        losses = F.cross_entropy(logits, yb, reduction="none")
    loss = next((v for h in hooks.per_example
                 if (v := h.data_loss(loop, losses, idx)) is not None), None)
    return losses.mean() if loss is None else loss


def _evaluate(net, loop: Loop, eval_sets, timer: Timer, fields) -> Evaluation:
    started = time.perf_counter()
    metrics = {name: evaluate(net.model, *split) for name, split in eval_sets.items()}
    timer.eval_s += time.perf_counter() - started
    return Evaluation(loop.step, loop.epoch, loop.loss, metrics, timer.train_s, timer.eval_s,
                      dict(fields))


__all__ = ["Evaluation", "Hook", "Loop", "RegularizerHook", "Timer", "TrainConfig",
           "TrainResult", "TrainingDiverged", "autocast", "batch_stream", "fine_tune",
           "optimizer_step", "use_exact_float32"]
