"""Label noise in a task's training labels (Li & Zhang 2021's noisy fine-tuning setting).

``symmetric`` flips each label with probability ``rate`` to a class drawn uniformly from
the *other* classes ("independent" noise); ``pairflip`` flips it to the next class
(c -> c + 1 mod C). Only the N training labels are corrupted (so also the search methods'
train and validation splits); the test set stays clean. The generator is fixed by the
task's seed, on a stream of its own so the noise does not change which examples are drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from bench.contract.errors import BenchError
from bench.contract.names import NOISE_TAGS, noise_tag
from bench.contract.options import from_table, is_number

NOISE_STREAM = 0x6E6F697365  # "noise": a seed stream apart from the sampling's


@dataclass(frozen=True)
class LabelNoise:
    """How a task's training labels are corrupted."""

    kind: str = "symmetric"
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
        """From a suite's table ``{ kind = "symmetric", rate = 0.4 }`` (or itself)."""
        if isinstance(value, dict) and "rate" not in value:
            raise BenchError("task label_noise needs a rate")
        return from_table(cls, value, "task label_noise", '{ kind = "symmetric", rate = 0.4 }')

    @property
    def tag(self) -> str:
        """A short name for task names: ``sym40``, ``pair20``."""
        return noise_tag(self.kind, self.rate)

    def corrupt(self, labels: torch.Tensor, num_classes: int, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noisy labels, sorted indices of the flipped examples)``; ``labels`` is kept."""
        y = labels.cpu().numpy()
        rng = np.random.default_rng([seed, NOISE_STREAM])
        flip = rng.random(len(y)) < self.rate
        noisy = y.copy()
        if self.kind == "symmetric":
            # an offset of 1..C-1 is a uniform draw among the other classes
            offset = rng.integers(1, num_classes, size=len(y))
        else:
            offset = np.ones(len(y), dtype=np.int64)
        noisy[flip] = (y[flip] + offset[flip]) % num_classes
        flipped = np.flatnonzero(flip)
        return (torch.from_numpy(noisy).to(labels.device, labels.dtype),
                torch.from_numpy(flipped))
