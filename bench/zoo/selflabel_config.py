"""Self-labeling's options (``SelfLabelingConfig``): what a task's ``self_labeling`` table
holds, checked when a suite is read. Kept apart from the training-loop hook
(``bench.worker.selflabel``) so that reading a suite does not import the training code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from bench.contract.errors import BenchError
from bench.contract.options import from_table, is_number
from bench.contract.space import Param

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
        return from_table(cls, value, "task self_labeling", "{ correct_threshold = 0.95 }")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def with_values(self, values: dict[str, float]) -> SelfLabelingConfig:
        """These options with a trial's tuned values (only this class's names)."""
        return dataclasses.replace(self, **{k: v for k, v in values.items()
                                            if k in self.names()})
