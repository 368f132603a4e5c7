"""Suites: TOML files naming tasks, methods, seeds and the one budget they all share.

    name = "quick"
    seeds = [0, 1, 2]
    reference = "grid"     # the method label reports compare against (default: the
                           # first label whose plugin is "grid"; none: the best method)

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
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.options import (check_hyperparameter, is_number, require_bool, require_int,
                           require_positive, require_run_name, require_seed)
from bench.method import Context, Method
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
        require_int("budget.workers", self.workers, 1)
        require_positive("budget.cpus_per_worker", self.cpus_per_worker)
        if not is_number(self.gpus_per_worker) or self.gpus_per_worker < 0:
            raise BenchError(f"budget.gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}")
        require_positive("budget.cap_s", self.cap_s)

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
    reference: str | None = None  # the label every method is compared with


def _check_keys(where: str, table: Any, allowed) -> dict:
    if not isinstance(table, dict):
        raise BenchError(f"{where} must be a table")
    unknown = set(table) - set(allowed)
    if unknown:
        raise BenchError(f"unknown key {sorted(unknown)[0]!r} in {where}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    return table


def _build(where: str, cls, table: dict):
    """``cls(**table)``; a bad key or value is refused with where it was found."""
    try:
        return cls(**table)
    except (TypeError, BenchError) as err:
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
        if not (isinstance(grid, list) and grid and all(is_number(v) for v in grid)):
            raise BenchError(f"{where} space.{name}: grid must be a non-empty list of numbers")
        low = spec.get("low", min(grid))
        high = spec.get("high", max(grid))
        if not (is_number(low) and is_number(high)):
            raise BenchError(f"{where} space.{name}: low and high must be numbers")
        log = spec.get("log", True)
        require_bool(f"{where} space.{name}: log", log)
        try:
            params.append(Param(name, float(low), float(high), tuple(float(v) for v in grid),
                                log))
        except BenchError as err:
            raise BenchError(f"{where} space.{name}: {err}") from None
    table["space"] = tuple(params)
    return table
BUDGET_KEYS = [f.name for f in dataclasses.fields(Budget)]


def check_starts(where: str, spec: MethodSpec, tasks, seeds, budget: Budget,
                 discrete: bool = False) -> None:
    """Build the method and start it on every task and seed, as its campaigns will: an
    unknown plugin, a bad option or a method that cannot start is refused now, before
    anything runs or is written (a method validates its options in ``start``)."""
    for task in tasks:
        for seed in seeds:
            try:
                spec.build().start(Context.of(task, seed, budget, discrete))
            except BenchError as err:
                raise BenchError(f"{where}: {err}") from None
            except Exception as err:  # noqa: BLE001 - a plugin's start() failing is bad input
                first = (str(err).strip().splitlines() or [""])[0]
                raise BenchError(f"{where}: cannot start on task {task.name}, seed {seed}: "
                                 f"{type(err).__name__}: {first}") from None


def check_task_values(where: str, task: Task) -> None:
    """Numbers training would refuse or choke on, refused now: every bound and grid value
    of the task's search-space overrides, and a batch larger than the N examples."""
    for param in task.space:
        for value in (param.low, param.high, *param.grid):
            check_hyperparameter(f"{where} space.{param.name}", param.name, task.regularizer,
                                 value)
    if task.batch_size > task.n:
        raise BenchError(f"{where}: batch_size {task.batch_size} is larger than n = {task.n} "
                         "(a batch holds at most the N training examples: set batch_size <= n)")


def read_toml(text: str, origin: str) -> dict:
    """Parsed TOML; malformed or too deeply nested text is one line naming ``origin``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BenchError(f"{origin}: malformed TOML: {err}") from None
    except RecursionError:
        raise BenchError(f"{origin}: malformed TOML: nested too deeply") from None


def parse_suite(text: str, origin: str = "suite") -> Suite:
    raw = read_toml(text, origin)
    _check_keys(origin, raw, ["name", "seeds", "budget", "tasks", "methods", "reference"])
    name = raw.get("name", Path(origin).stem)
    require_run_name(f"{origin}: name", name)
    seeds = raw.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise BenchError(f"{origin}: seeds must be a non-empty list of integers >= 0, "
                         f"got {seeds!r}")
    for seed in seeds:
        require_seed(f"{origin}: seed", seed)
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
    for i, task in enumerate(tasks):
        check_task_values(f"{origin} task {i + 1}", task)
    if len({t.name for t in tasks}) != len(tasks):
        raise BenchError(f"{origin}: two tasks share a name; set `name` to tell them apart")
    methods_raw = raw.get("methods")
    if not (isinstance(methods_raw, dict) and methods_raw):
        raise BenchError(f"{origin}: no [methods.*] tables")
    methods = []
    for label, options in methods_raw.items():
        options = dict(_check_keys(f"{origin} [methods.{label}]", options, options or {}))
        spec = MethodSpec(label, str(options.pop("method", label)), tuple(sorted(options.items())))
        check_starts(f"{origin} [methods.{label}]", spec, tasks, seeds, budget)
        methods.append(spec)
    return Suite(str(name), tasks, tuple(methods), tuple(seeds), budget, text,
                 _reference(origin, raw.get("reference"), methods))


def _reference(origin: str, reference: Any, methods: list[MethodSpec]) -> str | None:
    """The label reports compare against: the suite's ``reference``, else the first label
    whose plugin is the grid (None: reports fall back to the best method)."""
    labels = [m.label for m in methods]
    if reference is None:
        return next((m.label for m in methods if m.plugin == "grid"), None)
    if not isinstance(reference, str) or reference not in labels:
        raise BenchError(f"{origin}: reference must be one of the method labels "
                         f"({', '.join(labels)}), got {reference!r}")
    return reference


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise BenchError(f"cannot read suite {path}: {err.strerror if isinstance(err, OSError) else err}") from None
    return parse_suite(text, str(path))
