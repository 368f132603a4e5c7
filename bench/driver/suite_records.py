"""A replay suite checked against its records: the records exist, the suite's seeds and
tasks are theirs, and every method can be replayed on them (a search method; one that
prunes only on records with per-epoch validation; CLML selection only with CLML; BO traces
only where published). ``bench.driver.suite.parse_suite`` calls it for a suite with ``records``,
after the checks every suite gets; each refusal is one line naming what is wrong.

A run directory's records must be whole: a run that has finished, and, for every task and
seed replayed, a search run of every configuration its recorded values span, each retrained
on all N (a grid with ``retrain_all = true`` and no ``max_trials``); a replayed trial
otherwise fails for want of a recorded run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.method import Method
from bench.contract.options import require_bool
from bench.driver.budget import Budget
from bench.driver.suite import MethodSpec, RecordedTaskTable, RecordSource
from bench.records.published import PREFIX, RECORD_SETS, config_key, record_set
from bench.records.recorded import (SEPARATOR, Recorded, RecordedTask, load_recorded,
                                   load_records)


def is_published(records: RecordSource) -> bool:
    """Published record sets (A100 runtimes, charged as GPU-seconds), not a run directory."""
    return records.name.startswith(PREFIX)


def record_source(origin: str, raw: dict) -> RecordSource:
    """The suite's ``records``, ``records_method`` and ``bo``, checked against the records."""
    records = raw.get("records")
    if isinstance(records, list) and records and all(
            isinstance(r, str) and r.startswith(PREFIX) for r in records):
        records = SEPARATOR.join(records)  # several published record sets
    if not isinstance(records, str):
        raise BenchError(f"{origin}: records must name published:<{'|'.join(RECORD_SETS)}> "
                         "(or a list of them) or a run directory")
    if not records.startswith(PREFIX):
        _check_finished(origin, records)
    method = raw.get("records_method")
    if method is not None:
        if not isinstance(method, str) or records.startswith(PREFIX):
            raise BenchError(f"{origin}: records_method must be a string naming a method label "
                             "of a run directory's records")
        labels = sorted(set(load_records(records)[S.METHOD]))
        if method not in labels:
            raise BenchError(f"{origin}: records_method {method!r} is not a method of "
                             f"the records; they have: {', '.join(labels)}")
    bo = raw.get("bo", False)
    require_bool(f"{origin}: bo", bo)
    if bo and not (records.startswith(PREFIX) and any(
            record_set(r).bo for r in records.split(SEPARATOR))):
        raise BenchError(f"{origin}: bo = true needs published records with a BO trace ("
                         + ", ".join(r.name for r in RECORD_SETS.values() if r.bo) + ")")
    return RecordSource(records, method, bo)


def recorded_tasks(origin: str, records: RecordSource, tables: Sequence[RecordedTaskTable],
                   seeds: Sequence[int], methods: Sequence[MethodSpec], budget: Budget
                   ) -> tuple[RecordedTask, ...]:
    """The tasks of the records the suite names, once its seeds, methods and budget are
    known to replay on them."""
    recorded = load_recorded(records.name, records.method)
    known_seeds = set(int(s) for s in recorded.trials[S.SEED])
    missing = [s for s in seeds if s not in known_seeds]
    if missing:
        raise BenchError(f"{origin}: seed {missing[0]} is not in the records "
                         f"(they have {sorted(known_seeds)})")
    tasks = []
    for table in tables:
        if table.name not in recorded.tasks():
            _check_n(origin, table.name, records, recorded)
            raise BenchError(f"{origin}: unknown recorded task {table.name!r}; the records "
                             f"have: {', '.join(recorded.tasks())}")
        tasks.append(RecordedTask(table.name, recorded.space(table.name), table.cap_s,
                                  recorded.steps(table.name), recorded.epochs(table.name)))
    for spec in methods:
        if not spec.build().uses_validation:
            raise BenchError(f"{origin}: method {spec.label!r} learns its hyperparameters while "
                             "training; only search methods can be replayed")
    for task in tasks:
        _check_cap(origin, task, recorded, seeds, budget)
    for spec in methods:
        _check_fidelity(f"{origin} [methods.{spec.label}]", spec, records, recorded, tasks,
                        seeds)
    _check_selection(origin, methods, recorded)
    if not is_published(records):
        _check_whole(origin, records, [t.name for t in tasks], seeds)
    return tuple(tasks)


def _check_cap(origin: str, task: RecordedTask, recorded: Recorded, seeds: Sequence[int],
               budget: Budget) -> None:
    """A cap below the cheapest recorded trial would end every trial over budget: refused,
    as a live suite refuses a cap smaller than one trial."""
    trials = recorded.trials
    runs = trials[(trials[S.TASK] == task.name) & (trials[S.KIND] == S.SEARCH)
                  & trials[S.SEED].isin(list(seeds))]
    cheapest = float(runs[S.WALL_S].min()) * budget.charge_rate if len(runs) else 0.0
    cap = task.cap_s or budget.cap_s
    if cap < cheapest:
        raise BenchError(f"{origin}: task {task.name}: cap_s {cap:g} {budget.unit_label} is "
                         f"smaller than its cheapest recorded trial ({cheapest:.4g}): every "
                         "trial would end over budget")


def _check_finished(origin: str, records: str) -> None:
    """A run directory is replayed once its run has ended (metadata.json says "ended"): a
    run still going, or stopped, holds only some of its runs. Records without metadata
    (written by hand or by other tools) are taken as they are."""
    path = Path(records)
    try:
        metadata = json.loads((path / S.METADATA_FILE).read_text())
    except (OSError, ValueError):
        metadata = None
    started = isinstance(metadata, dict) or (path / S.JOURNAL_FILE).is_file()
    if started and not (isinstance(metadata, dict) and "ended" in metadata):
        raise BenchError(f"{origin}: records {records} are a run that has not finished "
                         f"(its {S.METADATA_FILE} has no end: still running, or stopped; "
                         "finish it with bench run SUITE --resume DIR)")


def _check_whole(origin: str, records: RecordSource, tasks: Sequence[str],
                 seeds: Sequence[int]) -> None:
    """Every configuration a replayed method may pick has a recorded search run (or its
    recorded failure) and, if it succeeded, a recorded retrain, at every seed."""
    trials = load_records(records.name)
    if records.method is not None:
        trials = trials[trials[S.METHOD] == records.method]
    whole = "replay records of a grid with retrain_all = true and no max_trials"
    for task in tasks:
        mine = trials[trials[S.TASK] == task]
        search = mine[mine[S.KIND] == S.SEARCH]
        ok = search[search[S.STATUS] == S.OK]
        # the values a method picks from: each hyperparameter's, over the OK search runs
        values: dict[str, set[float]] = {}
        for config in ok[S.CONFIG]:
            for name, value in json.loads(config).items():
                values.setdefault(name, set()).add(float(value))
        spanned = math.prod(len(v) for v in values.values()) if values else 0

        def keys(rows) -> set[str]:
            out = set()
            for config in rows[S.CONFIG]:
                hp = {k: float(v) for k, v in json.loads(config).items()}
                if hp.keys() == values.keys() and all(v in values[k] for k, v in hp.items()):
                    out.add(config_key(hp))
            return out

        for seed in seeds:
            at = search[search[S.SEED] == seed]
            ran = keys(at[at[S.STATUS].isin([S.OK, S.FAILED])])
            if len(ran) < spanned:
                raise BenchError(f"{origin}: records {records.name} hold search runs of "
                                 f"{len(ran)} of the {spanned} configurations their values "
                                 f"span for task {task} at seed {seed} (a grid cut short); "
                                 + whole)
            succeeded = keys(at[at[S.STATUS] == S.OK])
            retrains = mine[(mine[S.KIND] == S.RETRAIN) & (mine[S.SEED] == seed)]
            missing = succeeded - keys(retrains)
            if missing:
                raise BenchError(f"{origin}: records {records.name} retrain only "
                                 f"{len(succeeded) - len(missing)} of the {len(succeeded)} "
                                 f"configurations searched for task {task} at seed {seed} "
                                 "(the rest would fail: no recorded retrain); " + whole)


def _check_fidelity(where: str, spec: MethodSpec, records: RecordSource, recorded: Recorded,
                    tasks, seeds) -> None:
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
                             f"and the records {records.name} have none for task {task.name} "
                             "(published records never do; replay a harness run directory "
                             "whose search runs reported validation every epoch)")
        if missing:
            raise BenchError(f"{where}: {spec.plugin} prunes on per-epoch validation metrics "
                             f"and the records {records.name} have them for only "
                             f"{total - missing} of the {total} search runs of task "
                             f"{task.name} at these seeds")


def _check_n(origin: str, name: Any, records: RecordSource, recorded: Recorded) -> None:
    """A task of a published record set at an N it does not hold: say which N it holds."""
    if not (isinstance(name, str) and is_published(records) and "-N" in name):
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
