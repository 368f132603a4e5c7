"""Self-labeling (Li & Zhang 2021): label correction and loss reweighting for noisy labels.

- Label correction: from epoch ``correct_epoch`` on, a training example whose predicted
  class has probability above ``correct_threshold`` takes that class as its label, kept for
  the rest of training (the authors' ``_correct_label``).
- Reweighting: from epoch ``reweight_epoch`` on, the per-example losses of a batch are
  weighted by softmax(-loss_i / T) over the batch, times the batch size (so the weights
  average 1), which down-weights the examples the network finds least likely. As in the
  authors' code, T decays after the reweighting epoch: in epoch e it is
  ``temperature * max(0.5, exp(-0.1 (e - 1 - reweight_epoch)))``.

Epochs scale with the task's steps: the options are in the authors' epochs of their
30-epoch runs (VirtuosoResearch/Regularized-Self-Labeling, 1-based), and the authors'
epoch e begins at fraction (e - 1) / 30 of the task's optimiser steps. With their defaults
(correct_epoch 10, reweight_epoch 5) reweighting starts after 4/30 of the steps and
correction after 9/30.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from bench.errors import BenchError
from bench.options import is_number
from bench.space import Param
from bench.train import Hook, Loop

AUTHORS_EPOCHS = 30  # the authors' training length; epoch options are fractions of it


@dataclass(frozen=True)
class SelfLabelingConfig:
    """Self-labeling options (the authors' defaults). Epochs are the authors' epochs of
    ``AUTHORS_EPOCHS`` (fractional allowed), mapped onto the task's steps."""

    correct_epoch: float = 10.0
    correct_threshold: float = 0.9
    reweight_epoch: float = 5.0
    temperature: float = 2.0
    #: the options a search may tune, with their default ranges (named in a task's space)
    SPACE: ClassVar[tuple[Param, ...]] = (
        Param("temperature", 0.5, 8.0, grid=(1.0, 2.0, 4.0)),
        Param("correct_threshold", 0.5, 0.99, grid=(0.8, 0.9, 0.95), log=False),
        Param("correct_epoch", 1.0, AUTHORS_EPOCHS + 1.0, grid=(5.0, 10.0, 20.0), log=False),
        Param("reweight_epoch", 1.0, AUTHORS_EPOCHS + 1.0, grid=(1.0, 5.0, 10.0), log=False),
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not is_number(value):
                raise BenchError(f"self_labeling.{f.name} must be a number, got {value!r}")
            object.__setattr__(self, f.name, float(value))
        for key in ("correct_epoch", "reweight_epoch"):
            if getattr(self, key) < 1:
                raise BenchError(f"self_labeling.{key} must be >= 1 (the authors' epochs "
                                 f"count from 1), got {getattr(self, key)!r}")
        if not 0 <= self.correct_threshold < 1:
            raise BenchError(f"self_labeling.correct_threshold must be in [0, 1), "
                             f"got {self.correct_threshold!r}")
        if not self.temperature > 0:
            raise BenchError(f"self_labeling.temperature must be > 0, got {self.temperature!r}")

    @classmethod
    def of(cls, value: Any) -> SelfLabelingConfig:
        """From a suite's table, e.g. ``{ correct_threshold = 0.95 }`` (or itself)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise BenchError(f"task self_labeling must be a table of "
                             f"{', '.join(cls.names())}, got {value!r}")
        unknown = sorted(set(value) - set(cls.names()))
        if unknown:
            raise BenchError(f"unknown key {unknown[0]!r} in task self_labeling; "
                             f"allowed: {', '.join(cls.names())}")
        return cls(**value)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def with_values(self, values: dict[str, float]) -> SelfLabelingConfig:
        """These options with a trial's tuned values (only this class's names)."""
        return dataclasses.replace(self, **{k: v for k, v in values.items()
                                            if k in self.names()})


# ------------------------------------------------------------------- pure parts


def authors_epoch(step: int, total_steps: int) -> float:
    """The authors' (1-based) epoch that ``step`` steps done into ``total_steps`` maps to."""
    return 1 + AUTHORS_EPOCHS * step / total_steps


def relabel(probs: torch.Tensor, labels: torch.Tensor, threshold: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, predicted)``: the examples whose most probable class has probability above
    ``threshold`` and differs from their label, and each example's most probable class."""
    top, predicted = probs.max(dim=1)
    return (top > threshold) & (predicted != labels), predicted


def reweighting(losses: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(-loss_i / T) over the batch, times the batch size (no gradient)."""
    return torch.softmax(-losses.detach() / temperature, dim=0) * len(losses)


def temperature_at(epoch: float, config: SelfLabelingConfig) -> float:
    """The authors' schedule: T decays by exp(-0.1) per epoch after the reweighting epoch's
    first, to no less than half its start."""
    done = math.floor(epoch) - 1 - config.reweight_epoch
    return config.temperature * max(0.5, math.exp(-0.1 * max(0.0, done)))


# --------------------------------------------------------------------- the hook


class SelfLabeling(Hook):
    """The training-loop hook: corrected targets (kept in ``labels_``, one per training
    example) and reweighted batch losses. Reports how many labels differ from the given
    ones (``relabeled``) at every epoch's end."""

    def __init__(self, config: SelfLabelingConfig) -> None:
        self.config = config

    def on_start(self, loop: Loop) -> None:
        self.labels_ = loop.y.clone()

    def targets(self, loop: Loop, idx: torch.Tensor, y: torch.Tensor,
                logits: torch.Tensor) -> torch.Tensor:
        idx = idx.to(self.labels_.device)
        if authors_epoch(loop.step, loop.total_steps) >= self.config.correct_epoch:
            with torch.no_grad():
                probs = torch.softmax(logits.detach(), dim=1)
                mask, predicted = relabel(probs, self.labels_[idx], self.config.correct_threshold)
            self.labels_[idx[mask]] = predicted[mask]
        return self.labels_[idx]

    def data_loss(self, loop: Loop, losses: torch.Tensor,
                  idx: torch.Tensor) -> torch.Tensor | None:
        epoch = authors_epoch(loop.step, loop.total_steps)
        if epoch < self.config.reweight_epoch:
            return None  # the plain mean
        weights = reweighting(losses, temperature_at(epoch, self.config))
        return (weights * losses).mean()

    def on_epoch_end(self, loop: Loop) -> dict[str, float]:
        return {"relabeled": int((self.labels_ != loop.y).sum())}
