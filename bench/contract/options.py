"""Checks of values a user gives (suite keys, task fields, method options), each failing
with a one-line ``BenchError`` that names the value. Suites, tasks and methods' ``start``
share them, so every bad value is refused the same way before a run writes anything.
TOML and JSON booleans are Python ints: they are refused where a number is meant."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from bench.contract.errors import BenchError


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


PRECISIONS = ("float32", "bf16")  # a task's training precision (bench.training.train)


def require_precision(what: str, value: Any) -> None:
    if value not in PRECISIONS:
        raise BenchError(f"{what} must be one of {', '.join(map(repr, PRECISIONS))}, "
                         f"got {value!r}")


SEED_MAX = 2**32 - 1  # NumPy's legacy RandomState (Optuna's TPE) takes no larger seed
FLOAT32_MAX = 3.4028234663852886e38  # networks train in float32: larger is infinite there
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}")


def require_seed(what: str, value: Any) -> None:
    """A seed every random generator the harness seeds accepts: 0 .. 2**32 - 1."""
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX):
        raise BenchError(f"{what} must be an integer from 0 to {SEED_MAX}, got {value!r}")


def require_run_name(what: str, value: Any) -> None:
    """A name that is one safe path component (it names the default run directory):
    letters, digits, ``_ . + -``, at most 100, not starting with a dot or dash."""
    if not (isinstance(value, str) and _RUN_NAME.fullmatch(value)):
        raise BenchError(f"{what} must be a string of letters, digits and _ . + - (at most "
                         f"100, not starting with . or -), got {value!r}")


def from_table(cls, value: Any, where: str, example: str):
    """A frozen dataclass ``cls`` from a suite's sub-table (or ``value`` itself if it is
    one already): a non-table or an unknown key is refused in one line naming ``where``;
    ``cls`` checks the values."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise BenchError(f"{where} must be a table like {example}, got {value!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise BenchError(f"unknown key {unknown[0]!r} in {where}; allowed: "
                         f"{', '.join(allowed)}")
    return cls(**value)
