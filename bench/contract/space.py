"""Hyperparameter search spaces: a named range with its grid values."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.contract.errors import BenchError


@dataclass(frozen=True)
class Param:
    """One tunable hyperparameter: sampled in [low, high] (log-uniform if ``log``), or
    taken from ``grid`` by grid search. Grid values may lie outside the range (e.g. 0)."""

    name: str
    low: float
    high: float
    grid: tuple[float, ...]
    log: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise BenchError(f"bad range for {self.name}: [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise BenchError(f"log-uniform range for {self.name} must be positive, got {self.low}")
        if not self.grid:
            raise BenchError(f"empty grid for {self.name}")


LR = Param("lr", 1e-4, 0.1, grid=(0.1, 0.01, 1e-3, 1e-4))
STRENGTHS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0.0)  # the DE-ELBo study's L2-SP grid
