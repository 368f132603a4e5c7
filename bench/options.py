"""Checks of values a user gives (suite keys, task fields, method options), each failing
with a one-line ``BenchError`` that names the value. Suites, tasks and methods' ``start``
share them, so every bad value is refused the same way before a run writes anything.
TOML and JSON booleans are Python ints: they are refused where a number is meant."""

from __future__ import annotations

import math
from typing import Any

from bench.errors import BenchError


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def require_int(what: str, value: Any, minimum: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise BenchError(f"{what} must be an integer >= {minimum}, got {value!r}")


def require_positive(what: str, value: Any) -> None:
    if not (is_number(value) and value > 0):
        raise BenchError(f"{what} must be a number > 0, got {value!r}")


def require_bool(what: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise BenchError(f"{what} must be true or false, got {value!r}")


def require_positives(what: str, values: Any) -> None:
    """A non-empty list or tuple of numbers > 0 (e.g. a learning-rate sweep)."""
    if not (isinstance(values, (list, tuple)) and values
            and all(is_number(v) and v > 0 for v in values)):
        raise BenchError(f"{what} must be a non-empty list of numbers > 0, got {values!r}")
