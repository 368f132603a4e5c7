"""Suites: TOML files naming tasks, methods, seeds and the one budget they all share.

    name = "quick"
    seeds = [0, 1, 2]
    reference = "grid"     # the method label reports compare against (default: the
                           # first label whose plugin is "grid"; none: the best method)

    [budget]
    workers = 2            # trials running at once
    cpus_per_worker = 1    # Ray resources per trial: CPU cores (>= 1 when unit = "cpu")
    gpus_per_worker = 0    # GPUs: a fraction in (0, 1] shares one, or a whole number
    unit = "cpu"           # what compute is counted in: "gpu" (GPU-seconds, the default
                           # with GPUs) or "cpu" (CPU core-seconds, the default without)
    cap_s = 600            # tuning compute per (task, method, seed), in that unit
                           # (a task may set its own cap_s)

    [[tasks]]
    dataset = "animal-mnist"
    n = 100
    backbone = "efficientnet-lite0"
    ...                    # any field of bench.zoo.task.Task
    [tasks.space]          # optional: narrower search ranges and grids, by name
    lr = { low = 0.01, high = 0.1, grid = [0.1, 0.03, 0.01] }

    [methods.grid]         # label; `method = "..."` names the plugin if it differs
    max_trials = 24        # the method's options

A replay suite (``bench replay``) is the same file with a ``records`` field: its tasks are
tasks of the records, and it may name ``records_method`` and ``bo``:

    records = "published:cifar10-resnet50"   # bench list records, or a run directory;
                                             # a list of published record sets (their
                                             # tasks are named apart) for one suite on all
    # records_method = "grid"                # a run directory: only this label's runs
    bo = true                                # add the study's BO traces (where published)

    [[tasks]]
    name = "cifar10-resnet50-N100"           # a task of the records
    cap_s = 40000                            # optional

Everything else (name, seeds, budget, methods, reference) is read and checked by the same
code for both; what needs the records themselves is checked in ``bench.driver.suite_records``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.contract.errors import BenchError
from bench.contract.method import Context, Method
from bench.contract.schema import UNIT_LABELS
from bench.contract.options import (is_number, require_bool, require_positive,
                                    require_run_name, require_seed)
from bench.contract.plugins import build_method
from bench.contract.space import Param
from bench.driver.budget import Budget

if TYPE_CHECKING:
    from bench.records.recorded import RecordedTask
    from bench.zoo.task import Task


@dataclass(frozen=True)
class MethodSpec:
    label: str
    plugin: str
    options: tuple[tuple[str, Any], ...]

    def build(self) -> Method:
        return build_method(self.plugin, dict(self.options))


@dataclass(frozen=True)
class RecordSource:
    """The recorded runs a replay suite replays on."""

    name: str  # published:<set> (several joined by ", "), or a run directory
    method: str | None = None  # a run directory: replay only this method label's runs
    bo: bool = False  # add the published BO traces of the record sets that have them


@dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[Task, ...] | tuple[RecordedTask, ...]  # recorded tasks in a replay suite
    methods: tuple[MethodSpec, ...]
    seeds: tuple[int, ...]
    budget: Budget
    source: str  # the TOML text, kept with the records
    reference: str | None = None  # the label every method is compared with
    records: RecordSource | None = None  # a replay suite's records; None: a live suite

    @property
    def replay(self) -> bool:
        return self.records is not None


def _check_keys(where: str, table: Any, allowed) -> dict:
    if not isinstance(table, dict):
        raise BenchError(f"{where} must be a table")
    unknown = set(table) - set(allowed)
    if unknown:
        raise BenchError(f"unknown key {sorted(unknown)[0]!r} in {where}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    return table


def _build(where: str, cls, table: dict):
    """``cls(**table)``; a missing key, a bad key or a bad value is refused with where it
    was found."""
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in table
               and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise BenchError(f"{where}: missing {', '.join(missing)} (required)")
    try:
        return cls(**table)
    except (TypeError, BenchError) as err:
        raise BenchError(f"{where}: {err}") from None


PARAM_KEYS = ["low", "high", "grid", "log"]


def _task_table(where: str, table: Any) -> dict:
    """A task table; its ``space`` sub-table overrides search ranges and grids by name."""
    from bench.zoo.task import Task

    if isinstance(table, dict) and "unit" in table:  # one unit per suite: no task's own
        raise BenchError(f"{where}: unit is the budget's ([budget] unit = ...): every task of "
                         "a suite counts its compute in the same unit")
    table = dict(_check_keys(where, table, [f.name for f in dataclasses.fields(Task)]))
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
    from bench.zoo.regularizers import check_hyperparameter  # a live task has loaded it

    for param in task.space:
        for value in (param.low, param.high, *param.grid):
            if task.self_labeling is not None and param.name in task.self_labeling.names():
                try:  # self-labeling's own options: its config checks them
                    task.self_labeling.with_values({param.name: value})
                except BenchError as err:
                    raise BenchError(f"{where} space.{param.name}: {err}") from None
                continue
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


SUITE_KEYS = ["name", "seeds", "budget", "tasks", "methods", "reference"]
RECORDS_KEYS = ["records", "records_method", "bo"]  # a replay suite's own keys
NOT_REPLAY = "{origin} is not a replay suite (it names no records = ...): run it with bench run"


def parse_suite(text: str, origin: str = "suite", replay_only: bool = False) -> Suite:
    """A suite, live or (with a ``records`` field) replay: every key both have is checked
    here, by the same code; a replay suite's tasks and records in ``bench.driver.suite_records``.
    Every method is started on every task and seed before anything runs. ``replay_only``:
    a live suite is refused at once (``bench replay``)."""
    raw = read_toml(text, origin)
    replay = "records" in raw
    if replay_only and not replay:
        raise BenchError(NOT_REPLAY.format(origin=origin))
    _check_keys(origin, raw, SUITE_KEYS + RECORDS_KEYS)
    if not replay and (key := next((k for k in RECORDS_KEYS if k in raw), None)):
        raise BenchError(f"{origin}: {key} is a replay suite's key; a replay suite names its "
                         "records (records = ...)")
    if "name" in raw:
        name = raw["name"]
        require_run_name(f"{origin}: name", name)
    else:  # the run directory is named after the suite: the file's name must do as one
        name = Path(origin).stem
        require_run_name(f"{origin}: the suite sets no name, so its file's name", name)
    seeds = _seeds(origin, raw.get("seeds", [0]))
    budget = _build(f"{origin} [budget]", Budget,
                    _check_keys(f"{origin} [budget]", raw.get("budget", {}), BUDGET_KEYS))
    tables = raw.get("tasks")
    if not (isinstance(tables, list) and tables):
        raise BenchError(f"{origin}: no [[tasks]]")
    if replay:  # checked for form here, against the records below
        tasks = [_recorded_task_table(f"{origin} task {i + 1}", t) for i, t in enumerate(tables)]
    else:
        tasks = _live_tasks(origin, tables)
    if len({t.name for t in tasks}) != len(tasks):
        raise BenchError(f"{origin}: two tasks share a name; set `name` to tell them apart")
    methods = _methods(origin, raw.get("methods"))
    reference = _reference(origin, raw.get("reference"), methods)
    records = None
    if replay:  # imported here: these checks need pandas and the records themselves
        from bench.driver.suite_records import record_source, recorded_tasks

        records = record_source(origin, raw)
        budget = _replay_budget(f"{origin} [budget]", raw.get("budget", {}), budget, records)
        tasks = recorded_tasks(origin, records, tasks, seeds, methods, budget)
    for spec in methods:
        check_starts(f"{origin} [methods.{spec.label}]", spec, tasks, seeds, budget,
                     discrete=replay)
    return Suite(str(name), tuple(tasks), tuple(methods), tuple(seeds), budget, text,
                 reference, records)


def _replay_budget(where: str, table: dict, budget: Budget, records: RecordSource) -> Budget:
    """A replay counts compute in its records' unit. Published runtimes are A100 GPU-seconds
    of runs that held one GPU each: unit "gpu" at one GPU per trial (the default there). A
    run directory's records: the unit its metadata names (older runs without GPUs: "cpu")."""
    from bench.driver.suite_records import is_published
    from bench.records.rundir import metadata_unit, read_metadata

    if is_published(records):
        if ("unit" in table and budget.unit != "gpu"
                or "gpus_per_worker" in table and budget.gpus_per_worker != 1):
            raise BenchError(f"{where}: published records are A100 GPU-seconds of runs that "
                             "held one GPU each: leave unit and gpus_per_worker out, or set "
                             "unit = 'gpu' and gpus_per_worker = 1")
        return dataclasses.replace(budget, gpus_per_worker=1.0, unit="gpu")
    recorded = metadata_unit(read_metadata(records.name))
    if recorded is not None and recorded != budget.unit:
        raise BenchError(f"{where}: unit is {budget.unit!r} but the records in {records.name} "
                         f"count {UNIT_LABELS[recorded]}: set unit = {recorded!r}"
                         + (" and gpus_per_worker" if recorded == "gpu" else "")
                         + " (one unit per run)")
    return budget


def _seeds(origin: str, seeds: Any) -> list[int]:
    if not (isinstance(seeds, list) and seeds
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise BenchError(f"{origin}: seeds must be a non-empty list of integers >= 0, "
                         f"got {seeds!r}")
    for seed in seeds:
        require_seed(f"{origin}: seed", seed)
    if len(set(seeds)) != len(seeds):
        raise BenchError(f"{origin}: seeds repeat")
    return seeds


def _methods(origin: str, tables: Any) -> list[MethodSpec]:
    """The ``[methods.<label>]`` tables: each method's plugin (``method``, else the label)
    and options, built once (not started: ``check_starts`` does, on the tasks)."""
    if not (isinstance(tables, dict) and tables):
        raise BenchError(f"{origin}: no [methods.*] tables")
    methods = []
    for label, options in tables.items():
        where = f"{origin} [methods.{label}]"
        if not _LABEL.fullmatch(label):  # labels name rows of tables, lines and legends
            raise BenchError(f"{origin}: method label {label!r} must be letters, digits and "
                             "_ . + - (at most 60, not starting with . or -)")
        options = dict(_check_keys(where, options, options or {}))
        spec = MethodSpec(label, str(options.pop("method", label)), tuple(sorted(options.items())))
        try:  # an unknown plugin or option: refused here, before any check that builds it
            spec.build()
        except BenchError as err:
            raise BenchError(f"{where}: {err}") from None
        except Exception as err:  # noqa: BLE001 - a plugin's constructor failing is bad input
            first = (str(err).strip().splitlines() or [""])[0]
            raise BenchError(f"{where}: cannot build method {spec.plugin!r}: "
                             f"{type(err).__name__}: {first}") from None
        methods.append(spec)
    return methods


_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,59}")


def _live_tasks(origin: str, tables: list) -> list[Task]:
    from bench.zoo.task import Task

    tasks = [_build(f"{origin} task {i + 1}", Task, _task_table(f"{origin} task {i + 1}", t))
             for i, t in enumerate(tables)]
    for i, task in enumerate(tasks):
        check_task_values(f"{origin} task {i + 1}", task)
    return tasks


@dataclass(frozen=True)
class RecordedTaskTable:
    """A replay suite's ``[[tasks]]`` table, checked for form: the task of the records it
    names is looked up by ``bench.driver.suite_records``."""

    name: str
    cap_s: float | None = None


def _recorded_task_table(where: str, table: Any) -> RecordedTaskTable:
    table = _check_keys(where, table, ["name", "cap_s"])
    name, cap = table.get("name"), table.get("cap_s")
    if not isinstance(name, str):
        raise BenchError(f"{where}: name must be a string naming a task of the records, "
                         f"got {name!r}")
    if cap is not None:
        require_positive(f"{where}: task cap_s", cap)  # as a live task's cap_s
    return RecordedTaskTable(name, cap)


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


def load_suite(path: str | Path, replay_only: bool = False) -> Suite:
    """The suite in the file at ``path``, live or replay (see ``parse_suite``)."""
    path = Path(path)
    try:  # utf-8-sig: a byte-order mark some editors write is no TOML error
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise BenchError(f"cannot read suite {path}: "
                         f"{err.strerror if isinstance(err, OSError) else err}") from None
    return parse_suite(text, str(path), replay_only)
