"""Label noise in a task's training labels (Li & Zhang 2021's noisy fine-tuning setting).

``uniform`` (the default) is the authors' (``data_loader/random_noise.py``,
``label_noise(..., symmetric=True)``): exactly floor(rate x n) of the n labels, chosen
without replacement, are redrawn uniformly over all C classes, the true one included, so
about rate x (C - 1) / C of them end up wrong. ``flip`` is this harness's own: each label is
flipped with probability ``rate`` to a class drawn uniformly from the *other* classes
(``symmetric`` is its old name, kept so earlier suites read the same). ``pairflip`` flips
it to the next class (c -> c + 1 mod C); it is not the paper's. The test set stays clean.
The generator is fixed by the task's seed, on a stream of its own so the noise does not
change which examples are drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from bench.contract.errors import BenchError
from bench.contract.names import DEFAULT_NOISE_KIND, NOISE_TAGS, noise_tag
from bench.contract.options import from_table, is_number

NOISE_STREAM = 0x6E6F697365  # "noise": a seed stream apart from the sampling's


@dataclass(frozen=True)
class LabelNoise:
    """How a task's training labels are corrupted."""

    kind: str = DEFAULT_NOISE_KIND
    rate: float = 0.0
    KINDS: ClassVar[dict[str, str]] = NOISE_TAGS

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise BenchError(f"task label_noise.kind must be one of "
                             f"{', '.join(self.KINDS)}, got {self.kind!r}")
        if not (is_number(self.rate) and 0 <= self.rate < 1):
            raise BenchError(f"task label_noise.rate must be a number in [0, 1), "
                             f"got {self.rate!r}")

    @classmethod
    def of(cls, value: Any) -> LabelNoise:
        """From a suite's table ``{ kind = "uniform", rate = 0.4 }`` (or itself)."""
        if isinstance(value, dict) and "rate" not in value:
            raise BenchError("task label_noise needs a rate")
        return from_table(cls, value, "task label_noise", '{ kind = "uniform", rate = 0.4 }')

    @property
    def tag(self) -> str:
        """A short name for task names: ``uni40``, ``flip40`` (``sym40``), ``pair20``."""
        return noise_tag(self.kind, self.rate)

    def corrupt(self, labels: torch.Tensor, num_classes: int, seed: int,
                among: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noisy labels, sorted indices of the labels now wrong)``; ``labels`` is kept.
        ``among``: the indices that may be corrupted (default: all), e.g. a training
        split's, so that a validation split keeps its true labels."""
        y = labels.cpu().numpy()
        pool = np.arange(len(y)) if among is None else np.sort(among.cpu().numpy())
        rng = np.random.default_rng([seed, NOISE_STREAM])
        noisy = y.copy()
        if self.kind == "uniform":  # the authors': an exact count, redrawn over all classes
            chosen = rng.choice(pool, size=int(self.rate * len(pool)), replace=False)
            noisy[chosen] = rng.integers(0, num_classes, size=len(chosen))
        else:  # drawn for the whole pool, in this order: earlier runs' noise stays the same
            flip = rng.random(len(pool)) < self.rate
            if self.kind == "pairflip":
                offset = np.ones(len(pool), dtype=np.int64)
            else:  # flip: an offset of 1..C-1 is a uniform draw among the other classes
                offset = rng.integers(1, num_classes, size=len(pool))
            noisy[pool[flip]] = (y[pool[flip]] + offset[flip]) % num_classes
        wrong = np.flatnonzero(noisy != y)
        return (torch.from_numpy(noisy).to(labels.device, labels.dtype),
                torch.from_numpy(wrong))
