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


def suggestion_problems(config: object, space: tuple[Param, ...], discrete: bool = False,
                        learned: bool = False) -> list[str]:
    """What is wrong with a method's suggested configuration, in words (empty: nothing).
    It must name exactly the space's parameters (a ``learned`` method: a subset, those it
    does not learn), each a finite number inside its range or one of its grid values (grid
    values may lie outside the range, e.g. 0); in a ``discrete`` space (a replay) one of
    its recorded values."""
    if not isinstance(config, dict):
        return [f"a configuration is a dict of parameter values, got {type(config).__name__}"]
    names = [p.name for p in space]
    problems = []
    if not learned and (missing := [n for n in names if n not in config]):
        problems.append(f"missing {', '.join(missing)}")
    if extra := [str(n) for n in config if n not in names]:
        problems.append(f"not in the space: {', '.join(extra)}")
    for param in space:
        if param.name not in config:
            continue
        value = config[param.name]
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value)):
            problems.append(f"{param.name} = {value!r} is not a finite number")
        elif discrete and not any(math.isclose(value, v, rel_tol=1e-9) for v in param.grid):
            problems.append(f"{param.name} = {value!r} is none of its recorded values "
                            f"({', '.join(f'{v:g}' for v in param.grid)})")
        elif not discrete and not (
                param.low - 1e-12 * abs(param.low) <= value
                <= param.high + 1e-12 * abs(param.high)
                or any(math.isclose(value, v, rel_tol=1e-9) for v in param.grid)):
            problems.append(f"{param.name} = {value!r} is outside [{param.low:g}, "
                            f"{param.high:g}] and none of its grid values")
    if problems:
        problems.append(f"the space is {', '.join(names)}")
    return problems
