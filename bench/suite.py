"""Suites: TOML files naming tasks, methods, seeds and the one budget they all share.

    name = "quick"
    seeds = [0, 1, 2]

    [budget]
    workers = 2            # trials running at once
    cpus_per_worker = 1    # Ray resources per trial (fractions allowed)
    gpus_per_worker = 0
    cap_s = 600            # tuning compute per (task, method, seed), resource-seconds
                           # (a task may set its own cap_s)

    [[tasks]]
    dataset = "animal-mnist"
    n = 100
    backbone = "efficientnet-lite0"
    ...                    # any field of bench.task.Task
    [tasks.space]          # optional: narrower search ranges and grids, by name
    lr = { low = 0.01, high = 0.1, grid = [0.1, 0.03, 0.01] }

    [methods.grid]         # label; `method = "..."` names the plugin if it differs
    max_trials = 24        # the method's options
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.method import Method
from bench.plugins import build_method
from bench.space import Param
from bench.task import Task


@dataclass(frozen=True)
class Budget:
    """The worker pool and compute cap every method of a task gets."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    cap_s: float = 600.0

    def __post_init__(self) -> None:
        if not (isinstance(self.workers, int) and self.workers >= 1):
            raise BenchError(f"budget.workers must be an integer >= 1, got {self.workers!r}")
        if not _number(self.cpus_per_worker) or self.cpus_per_worker <= 0:
            raise BenchError(f"budget.cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if not _number(self.gpus_per_worker) or self.gpus_per_worker < 0:
            raise BenchError(f"budget.gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}")
        if not _number(self.cap_s) or self.cap_s <= 0:
            raise BenchError(f"budget.cap_s must be a number > 0, got {self.cap_s!r}")

    @property
    def resources_per_worker(self) -> float:
        """What one trial holds; resource-seconds = wall seconds x this."""
        return self.cpus_per_worker + self.gpus_per_worker


@dataclass(frozen=True)
class MethodSpec:
    label: str
    plugin: str
    options: tuple[tuple[str, Any], ...]

    def build(self) -> Method:
        return build_method(self.plugin, dict(self.options))


@dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[Task, ...]
    methods: tuple[MethodSpec, ...]
    seeds: tuple[int, ...]
    budget: Budget
    source: str  # the TOML text, kept with the records


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_keys(where: str, table: Any, allowed) -> dict:
    if not isinstance(table, dict):
        raise BenchError(f"{where} must be a table")
    unknown = set(table) - set(allowed)
    if unknown:
        raise BenchError(f"unknown key {sorted(unknown)[0]!r} in {where}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    return table


def _build(where: str, cls, table: dict):
    try:
        return cls(**table)
    except TypeError as err:
        raise BenchError(f"{where}: {err}") from None


TASK_KEYS = [f.name for f in dataclasses.fields(Task)]
PARAM_KEYS = ["low", "high", "grid", "log"]


def _task_table(where: str, table: Any) -> dict:
    """A task table; its ``space`` sub-table overrides search ranges and grids by name."""
    table = dict(_check_keys(where, table, TASK_KEYS))
    space = _check_keys(f"{where} space", table.get("space", {}), table.get("space") or {})
    params = []
    for name, spec in space.items():
        spec = _check_keys(f"{where} space.{name}", spec, PARAM_KEYS)
        grid = spec.get("grid")
        if not (isinstance(grid, list) and grid and all(_number(v) for v in grid)):
            raise BenchError(f"{where} space.{name}: grid must be a non-empty list of numbers")
        low = spec.get("low", min(grid))
        high = spec.get("high", max(grid))
        if not (_number(low) and _number(high)):
            raise BenchError(f"{where} space.{name}: low and high must be numbers")
        params.append(Param(name, float(low), float(high), tuple(float(v) for v in grid),
                            bool(spec.get("log", True))))
    table["space"] = tuple(params)
    return table
BUDGET_KEYS = [f.name for f in dataclasses.fields(Budget)]


def parse_suite(text: str, origin: str = "suite") -> Suite:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BenchError(f"{origin}: malformed TOML: {err}") from None
    _check_keys(origin, raw, ["name", "seeds", "budget", "tasks", "methods"])
    name = raw.get("name", Path(origin).stem)
    seeds = raw.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        raise BenchError(f"{origin}: seeds must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise BenchError(f"{origin}: seeds repeat")
    budget = _build(f"{origin} [budget]", Budget,
                    _check_keys(f"{origin} [budget]", raw.get("budget", {}), BUDGET_KEYS))
    tasks_raw = raw.get("tasks")
    if not (isinstance(tasks_raw, list) and tasks_raw):
        raise BenchError(f"{origin}: no [[tasks]]")
    tasks = tuple(_build(f"{origin} task {i + 1}", Task,
                         _task_table(f"{origin} task {i + 1}", t))
                  for i, t in enumerate(tasks_raw))
    if len({t.name for t in tasks}) != len(tasks):
        raise BenchError(f"{origin}: two tasks share a name; set `name` to tell them apart")
    methods_raw = raw.get("methods")
    if not (isinstance(methods_raw, dict) and methods_raw):
        raise BenchError(f"{origin}: no [methods.*] tables")
    methods = []
    for label, options in methods_raw.items():
        options = dict(_check_keys(f"{origin} [methods.{label}]", options, options or {}))
        spec = MethodSpec(label, str(options.pop("method", label)), tuple(sorted(options.items())))
        spec.build()  # unknown plugin or option: refused now, before anything runs
        methods.append(spec)
    return Suite(str(name), tasks, tuple(methods), tuple(seeds), budget, text)


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise BenchError(f"cannot read suite {path}: {err.strerror if isinstance(err, OSError) else err}") from None
    return parse_suite(text, str(path))
