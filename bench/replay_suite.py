"""Replay suites: search methods replayed on recorded runs (``bench replay``).

A replay suite is TOML:

    name = "replay-cifar10-resnet50"
    records = "published:cifar10-resnet50"   # bench list records, or a run directory;
                                             # a list of published record sets (their
                                             # tasks are named apart) for one suite on all
    seeds = [1001, 2001, 3001]               # the records' seeds
    # records_method = "grid"                # a run directory: only this label's runs
    bo = true                                # add the study's BO traces (where published)

    [budget]
    workers = 1
    cpus_per_worker = 1                      # recorded runs held one GPU: resource = runtime
    cap_s = 1e12

    [[tasks]]
    name = "cifar10-resnet50-N100"           # a task of the records
    cap_s = 40000                            # optional

    [methods.grid]
    [methods.random]
    trials = 24
"""

from __future__ import annotations

import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench import schema as S
from bench.campaign import Campaign, CampaignQueue
from bench.errors import BenchError
from bench.method import Method
from bench.published import COMPUTE_UNIT, PREFIX, RECORD_SETS, published_bo, record_set
from bench.records import frame, write_json, write_table, write_text
from bench.replay import (SEPARATOR, Recorded, RecordedTask, SimulatedClock, load_recorded,
                          load_records, simulate)
from bench.suite import BUDGET_KEYS, Budget, MethodSpec, _build, _check_keys, check_starts

LIVE_TABLE_S = 5.0  # a replay rewrites its live trials table at most this often


@dataclass(frozen=True)
class ReplaySuite:
    name: str
    records: str
    tasks: tuple[RecordedTask, ...]
    methods: tuple[MethodSpec, ...]
    seeds: tuple[int, ...]
    budget: Budget
    bo: bool
    source: str
    records_method: str | None = None  # a run directory: replay only this label's runs


def parse_replay_suite(text: str, origin: str = "replay suite") -> ReplaySuite:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BenchError(f"{origin}: malformed TOML: {err}") from None
    _check_keys(origin, raw, ["name", "records", "records_method", "seeds", "bo", "budget",
                              "tasks", "methods"])
    records = raw.get("records")
    if isinstance(records, list) and records and all(
            isinstance(r, str) and r.startswith(PREFIX) for r in records):
        records = SEPARATOR.join(records)  # several published record sets
    if not isinstance(records, str):
        raise BenchError(f"{origin}: records must name published:<{'|'.join(RECORD_SETS)}> "
                         "(or a list of them) or a run directory")
    records_method = raw.get("records_method")
    if records_method is not None:
        if not isinstance(records_method, str) or records.startswith(PREFIX):
            raise BenchError(f"{origin}: records_method must be a string naming a method label "
                             "of a run directory's records")
        labels = sorted(set(load_records(records)[S.METHOD]))
        if records_method not in labels:
            raise BenchError(f"{origin}: records_method {records_method!r} is not a method of "
                             f"the records; they have: {', '.join(labels)}")
    recorded = load_recorded(records, records_method)
    seeds = raw.get("seeds")
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        raise BenchError(f"{origin}: seeds must be a non-empty list of the records' seeds")
    known_seeds = set(int(s) for s in recorded.trials[S.SEED])
    missing = [s for s in seeds if s not in known_seeds]
    if missing:
        raise BenchError(f"{origin}: seed {missing[0]} is not in the records "
                         f"(they have {sorted(known_seeds)})")
    budget = _build(f"{origin} [budget]", Budget,
                    _check_keys(f"{origin} [budget]", raw.get("budget", {}), BUDGET_KEYS))
    tasks = []
    for i, table in enumerate(raw.get("tasks") or []):
        table = _check_keys(f"{origin} task {i + 1}", table, ["name", "cap_s"])
        name = table.get("name")
        if name not in recorded.tasks():
            _check_n(origin, name, records, recorded)
            raise BenchError(f"{origin}: unknown recorded task {name!r}; the records have: "
                             f"{', '.join(recorded.tasks())}")
        cap = table.get("cap_s")
        if cap is not None and not (isinstance(cap, (int, float)) and cap > 0):
            raise BenchError(f"{origin} task {name}: cap_s must be a number > 0")
        tasks.append(RecordedTask(name, recorded.space(name), cap, recorded.steps(name),
                                  recorded.epochs(name)))
    if not tasks:
        raise BenchError(f"{origin}: no [[tasks]]")
    methods = []
    for label, options in (raw.get("methods") or {}).items():
        options = dict(_check_keys(f"{origin} [methods.{label}]", options, options or {}))
        spec = MethodSpec(label, str(options.pop("method", label)), tuple(sorted(options.items())))
        if not spec.build().uses_validation:
            raise BenchError(f"{origin}: method {label!r} learns its hyperparameters while "
                             "training; only search methods can be replayed")
        methods.append(spec)
    if not methods:
        raise BenchError(f"{origin}: no [methods.*] tables")
    for spec in methods:
        _check_fidelity(f"{origin} [methods.{spec.label}]", spec, records, recorded, tasks,
                        seeds)
    for spec in methods:
        check_starts(f"{origin} [methods.{spec.label}]", spec, tasks, seeds, budget,
                     discrete=True)
    bo = bool(raw.get("bo", False))
    if bo and not (records.startswith(PREFIX) and any(
            record_set(r).bo for r in records.split(SEPARATOR))):
        raise BenchError(f"{origin}: bo = true needs published records with a BO trace ("
                         + ", ".join(r.name for r in RECORD_SETS.values() if r.bo) + ")")
    _check_selection(origin, methods, recorded)
    return ReplaySuite(str(raw.get("name", Path(origin).stem)), records, tuple(tasks),
                       tuple(methods), tuple(seeds), budget, bo, text, records_method)


def _check_fidelity(where: str, spec: MethodSpec, records: str, recorded: Recorded, tasks,
                    seeds) -> None:
    """A method that prunes on per-epoch validation metrics (asks for them and hears
    reports) is replayed only on records that hold them for every configuration it may
    pick; anything else would run it without pruning, silently. (A grid that only
    records them, ``report_validation``, does not need them.)"""
    method = spec.build()
    if not (method.reports_validation and type(method).on_report is not Method.on_report):
        return
    for task in tasks:
        missing, total = recorded.unvalidated(task.name, seeds)
        if missing == total:
            raise BenchError(f"{where}: {spec.plugin} prunes on per-epoch validation metrics "
                             f"and the records {records} have none for task {task.name} "
                             "(published records never do; replay a harness run directory "
                             "whose search runs reported validation every epoch)")
        if missing:
            raise BenchError(f"{where}: {spec.plugin} prunes on per-epoch validation metrics "
                             f"and the records {records} have them for only {total - missing} "
                             f"of the {total} search runs of task {task.name} at these seeds")


def _check_n(origin: str, name, records: str, recorded: Recorded) -> None:
    """A task of a published record set at an N it does not hold: say which N it holds."""
    if not (isinstance(name, str) and records.startswith(PREFIX) and "-N" in name):
        return
    prefix = name.rsplit("-N", 1)[0]
    ns = sorted(int(t.rsplit("-N", 1)[1]) for t in recorded.tasks()
                if t.rsplit("-N", 1)[0] == prefix)
    if ns:
        raise BenchError(f"{origin}: task {name!r}: the records hold {prefix} at N = "
                         f"{', '.join(map(str, ns))} only")


def _check_selection(origin: str, methods, recorded: Recorded) -> None:
    """``select_by = "clml"`` needs records that carry each run's CLML."""
    has_clml = S.VAL_CLML in recorded.trials and recorded.trials[S.VAL_CLML].notna().any()
    for spec in methods:
        if dict(spec.options).get("select_by") == "clml" and not has_clml:
            raise BenchError(f"{origin} [methods.{spec.label}]: select_by = \"clml\" needs "
                             "records with CLML (published:cifar10-convnext-clml)")


def run_replay(suite: ReplaySuite, out: Path, progress: bool = True) -> Path:
    """Replay ``suite`` into ``out`` (records, metadata), like ``bench.run.run_suite``."""
    from bench.run import Progress, _machine, _versions, check_output_dir

    out = Path(out)
    check_output_dir(out)
    recorded = load_recorded(suite.records, suite.records_method)
    clock = SimulatedClock()
    started = time.perf_counter()
    show = Progress(suite, progress)
    plans = [(task, seed, spec) for task in suite.tasks for seed in suite.seeds
             for spec in suite.methods]
    finished: list[Campaign] = []
    started_campaigns: list[Campaign] = []

    def make(task, seed, spec):
        def build():
            started_campaigns.append(Campaign(
                suite.name, task, spec.label, spec.build(), seed, suite.budget, 0.0,
                on_record=record, clock=clock, discrete=True, plugin=spec.plugin))
            return started_campaigns[-1]
        return build

    last_write = [0.0]

    def record(campaign: Campaign, row: dict) -> None:  # a live table, as bench run keeps
        show.record(campaign, row)
        # rewritten at most every LIVE_TABLE_S of wall time: each write copies every row
        if time.perf_counter() - last_write[0] >= LIVE_TABLE_S:
            write_table(out / S.TRIALS_FILE, frame(
                [r for c in started_campaigns for r in c.rows], S.TRIAL_COLUMNS))
            last_write[0] = time.perf_counter()

    def done(campaign: Campaign) -> None:
        finished.append(campaign)
        show.done(campaign)

    queue = CampaignQueue([make(*plan) for plan in plans], show.campaign, done)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / S.SUITE_FILE, suite.source)
    simulate(queue, recorded, suite.budget.workers, clock)
    rows = [r for c in finished for r in c.rows]
    if suite.records.startswith(PREFIX):  # each recorded run held one A100: charge GPU-seconds
        rows = [{**r, S.CPU_S: None, S.GPU_S: r[S.WALL_S]} for r in rows]
    trials = frame(rows, S.TRIAL_COLUMNS)
    if suite.bo:
        bo = pd.concat([published_bo(r) for r in suite.records.split(SEPARATOR)
                        if record_set(r).bo], ignore_index=True)
        names = {t.name for t in suite.tasks}
        bo = bo[bo[S.TASK].isin(names) & (bo[S.SEED] // 100).isin(suite.seeds)]
        trials = pd.concat([trials, bo.assign(**{S.SUITE: suite.name, S.PLUGIN: "published:bo"})],
                           ignore_index=True)  # recorded traces, not a plugin run here
    write_table(out / S.TRIALS_FILE, trials)
    write_table(out / S.REPORTS_FILE, frame([r for c in finished for r in c.reports],
                                            S.REPORT_COLUMNS))
    write_json(out / S.METADATA_FILE, {
        **(COMPUTE_UNIT if suite.records.startswith(PREFIX) else {}),
        "suite": suite.name, "backend": "replay", "records": suite.records,
        S.REFERENCE: next((m.label for m in suite.methods if m.plugin == "grid"), None),
        "command": " ".join(sys.argv), "versions": _versions(), "machine": _machine(),
        "budget": vars(suite.budget), "seeds": list(suite.seeds),
        "simulated_s": clock.now, "replay_wall_s": time.perf_counter() - started})
    return out
