"""A replay suite checked against its records: the records exist, the suite's seeds and
tasks are theirs, and every method can be replayed on them (a search method; one that
prunes only on records with per-epoch validation; CLML selection only with CLML; BO traces
only where published). ``bench.driver.suite.parse_suite`` calls it for a suite with ``records``,
after the checks every suite gets; each refusal is one line naming what is wrong."""

from __future__ import annotations

from typing import Any, Sequence

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.method import Method
from bench.contract.options import require_bool
from bench.driver.replay import SEPARATOR, Recorded, RecordedTask, load_recorded, load_records
from bench.driver.suite import MethodSpec, RecordedTaskTable, RecordSource
from bench.records.published import PREFIX, RECORD_SETS, record_set


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
                   seeds: Sequence[int], methods: Sequence[MethodSpec]
                   ) -> tuple[RecordedTask, ...]:
    """The tasks of the records the suite names, once its seeds and methods are known to
    replay on them."""
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
    for spec in methods:
        _check_fidelity(f"{origin} [methods.{spec.label}]", spec, records, recorded, tasks,
                        seeds)
    _check_selection(origin, methods, recorded)
    return tuple(tasks)


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
