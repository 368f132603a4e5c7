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

import math

import torch

# the options live in bench.zoo.selflabel_config (read with a suite); re-exported here
from bench.training.train import Hook, Loop
from bench.zoo.selflabel_config import AUTHORS_EPOCHS, SelfLabelingConfig


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
