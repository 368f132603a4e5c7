"""``check_method``: certify that a tuning method obeys the plugin contract.

Like scikit-learn's ``check_estimator``: the method runs through a tiny real task (digits,
the pretrained small CNN at 8 px) with the harness's own campaign code and, if it is a
search method, in replay on recorded runs (a discrete space): the published ResNet-50 grid,
or for a method that prunes (``reports_validation``) the reference grid's recorded
per-epoch validation curves in results/default. Learned methods are never replayed (their
runs have no records to replay). The live run's journal is then restored into a fresh
method, as ``bench run --resume`` does, and the replay run again, to check that the same
seed gives the same suggestions and decisions; ``bad_options`` are each refused in
``start``. Named checks (``CHECKS``) look at what happened. Each failure is an
AssertionError that starts with the check's name. ``method_checks`` gives them one by one
and ``parametrize_with_checks`` makes them pytest cases, as scikit-learn's
``parametrize_with_checks`` does; the live run and the replay are made once per process
and method and shared by the checks.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
import types
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.method import Context, FitData, Method
from bench.contract.protocol import Event, event_kind
from bench.driver.campaign import (BadSuggestion, Campaign, CampaignQueue, MethodHookError,
                                   run_inline)
from bench.driver.budget import Budget
from bench.worker.trial import task_data
from bench.zoo.task import Task

TINY_TASK = Task(dataset="digits", n=60, backbone="small-cnn", image_size=8, steps=6,
                 batch_size=16, test_limit=90, name="check-method-digits")

_writes: list[str] | None = None  # files opened for writing while a hook runs


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event: str, args: tuple) -> None:
    """Notes every file opened for writing, by open() (a mode) or os.open() (flags)."""
    if _writes is None or event != "open" or len(args) < 3:
        return
    path, mode, flags = args[0], args[1], args[2]
    if (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            (mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS):
        _writes.append(str(path))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one is idle by default


class _Watched:
    """Wraps a method: every hook call is audited for file writes (the harness's own work,
    such as building the network, is not); fit notes what data it was given."""

    def __init__(self, method: Method, fail_first_fit: bool) -> None:
        self._method = method
        self._fail_next = fail_first_fit
        self.validation_seen_by_learned = False
        self.violations: list[str] = []
        self.suggestions: list[tuple[str, dict]] = []  # (trial, configuration), in order
        self.decisions: list[tuple[str, int, bool]] = []  # on_report: (trial, step, stop)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # incl. _method itself while copy/pickle rebuilds us
            raise AttributeError(name)
        attr = getattr(self._method, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            global _writes
            _writes = []
            try:
                answer = attr(*args, **kwargs)
            finally:
                written, _writes = _writes, None
                if written:
                    self.violations.append(f"{type(self._method).__name__}.{name} wrote "
                                           f"files: {written}")
            if name == "suggest" and isinstance(answer, dict):
                self.suggestions.append((args[0], dict(answer)))
            elif name == "on_report":
                self.decisions.append((args[0], args[1], bool(answer)))
            return answer

        return call

    def fit(self, data: FitData, config, report):
        if not self._method.uses_validation and data.validation is not None:
            self.validation_seen_by_learned = True
        if self._fail_next:
            self._fail_next = False
            raise RuntimeError("injected failure (check_method)")
        return self.__getattr__("fit")(replace(data, make_network=_unaudited(data.make_network)),
                                       config, report)


def _unaudited(make):
    def call():
        global _writes
        saved, _writes = _writes, None
        try:
            return make()
        finally:
            _writes = saved

    return call


def _check_no_ray(cls: type) -> None:
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        for value in vars(module).values() if module else ():
            name = getattr(value, "__name__", "") if isinstance(value, types.ModuleType) else \
                getattr(value, "__module__", "") or ""
            assert not (name == "ray" or name.startswith("ray.")), \
                f"{klass.__module__} uses Ray ({name}); methods must not touch Ray"


def _error_text(err: BaseException) -> str:
    if isinstance(err, MethodHookError):
        return f"{err}\n{err.trace}"
    return f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exception(err))


@dataclass
class _LiveRun:
    """What the tiny live campaign did (shared by the checks)."""

    campaign: Campaign | None = None
    watched: list[_Watched] = field(default_factory=list)
    error: BaseException | None = None  # the campaign stopped: a hook raised, or worse
    journal: list[dict] = field(default_factory=list)  # its events, as bench run logs them

    def tuning(self) -> list[dict]:
        return [r for r in self.campaign.rows if r[S.KIND] != S.RETRAIN] if self.campaign else []


@dataclass
class _ReplayRun:
    rows: list[dict] = field(default_factory=list)
    reports: list[dict] = field(default_factory=list)
    error: BaseException | None = None
    cap_s: float = 0.0
    records: str = ""


_RUNS: dict[tuple, Any] = {}


def _key(kind: str, cls: type, options: dict, cap_s: float) -> tuple:
    return kind, cls, repr(sorted(options.items())), cap_s


def _live_run(cls: type[Method], options: dict, cap_s: float) -> _LiveRun:
    key = _key("live", cls, options, cap_s)
    if key in _RUNS:
        return _RUNS[key]
    run = _RUNS[key] = _LiveRun()
    tempfile.gettempdir()  # Python probes the temp dir by writing once; not the method's doing
    task_data(TINY_TASK, 0)  # loaded (and torch imported) before the cap's clock starts
    try:
        watched = _Watched(cls(**options), fail_first_fit=False)
        run.watched.append(watched)
        campaign = _tiny_campaign(watched, cap_s)
        campaign.log = run.journal.append
        run.campaign = campaign
        campaign.worker_method = _Watched(campaign.worker_method, fail_first_fit=True)
        run.watched.append(campaign.worker_method)
        run_inline(campaign)  # the campaign checks each suggestion (BadSuggestion)
    except Exception as err:  # noqa: BLE001 - reported by the check hooks_raise_nothing
        run.error = err
    return run


def _tiny_campaign(method, cap_s: float) -> Campaign:
    return Campaign("check", TINY_TASK, method.name, method,  # type: ignore[arg-type]
                    seed=0, budget=Budget(workers=1, cap_s=cap_s), clock0=time.perf_counter())


#: a search method that does not prune is replayed on the published ResNet-50 L2-SP grid
REPLAY_RECORDS = "published:cifar10-resnet50"
#: one that prunes, on the reference grid's recorded per-epoch validation curves (the
#: published records have none): a harness run directory of this checkout
PRUNING_RECORDS = Path(__file__).resolve().parents[1] / "results" / "default"
PRUNING_RECORDS_METHOD, PRUNING_TASK = "grid", "animal-mnist-N100-small-cnn"


def prunes(cls: type[Method], options: dict) -> bool:
    """Whether the method asks for per-epoch validation (``reports_validation``, which an
    instance may set from its options, as the grid does)."""
    return bool(cls(**options).reports_validation)


def _recorded(pruning: bool = False):
    """Recorded runs to replay on, one task and seed of them, loaded once per process:
    the published ResNet-50 grid (real runs, no per-epoch curves), or for a pruning method
    the reference grid's runs with their per-epoch validation reports."""
    key = ("recorded", pruning)
    if key not in _RUNS:
        from bench.records.recorded import Recorded, RecordedTask, load_records
        from bench.records.tables import read_reports, read_trials

        if pruning:
            assert (PRUNING_RECORDS / S.TRIALS_FILE).is_file(), (
                f"a pruning method is replayed on recorded per-epoch validation curves, "
                f"{PRUNING_RECORDS}, which this installation lacks (a checkout has them)")
            trials, reports = read_trials(PRUNING_RECORDS), read_reports(PRUNING_RECORDS)
            seed = int(min(trials[S.SEED]))
            mine = [(t[S.TASK] == PRUNING_TASK) & (t[S.SEED] == seed)
                    & (t[S.METHOD] == PRUNING_RECORDS_METHOD) for t in (trials, reports)]
            recorded, name = Recorded(trials[mine[0]], reports[mine[1]]), PRUNING_TASK
        else:
            recorded = Recorded(load_records(REPLAY_RECORDS))
            name = recorded.tasks()[0]
        mine = recorded.trials[(recorded.trials[S.TASK] == name)
                               & (recorded.trials[S.KIND] == S.SEARCH)]
        seed = int(min(mine[S.SEED]))
        grid_s = float(mine[mine[S.SEED] == seed][S.WALL_S].sum())
        task = RecordedTask(name, recorded.space(name), steps=recorded.steps(name),
                            epochs=recorded.epochs(name))
        _RUNS[key] = (recorded, task, seed, grid_s)
    return _RUNS[key]


def _replay_run(cls: type[Method], options: dict, attempt: int = 1) -> _ReplayRun:
    key = _key(f"replay{attempt}", cls, options, 0.0)
    if key in _RUNS:
        return _RUNS[key]
    from bench.driver.replay import SimulatedClock, simulate

    run = _RUNS[key] = _ReplayRun()
    pruning = prunes(cls, options)
    recorded, task, seed, grid_s = _recorded(pruning)
    run.records = str(PRUNING_RECORDS) if pruning else REPLAY_RECORDS
    run.cap_s = grid_s  # what the whole grid cost: ends a method that never finishes
    budget = Budget(workers=2, cap_s=grid_s)
    clock = SimulatedClock()
    campaigns: list[Campaign] = []

    def plan() -> Campaign:
        campaigns.append(Campaign("check-replay", task, cls.name, cls(**options), seed, budget,
                                  0.0, clock=clock, discrete=True))
        return campaigns[-1]

    try:
        simulate(CampaignQueue([plan]), recorded, budget.workers, clock)
    except Exception as err:  # noqa: BLE001 - reported by the check replays_on_recorded_runs
        run.error = err
    run.rows = campaigns[0].rows if campaigns else []
    run.reports = campaigns[0].reports if campaigns else []
    return run


# ------------------------------------------------------------------ the checks, by name


def check_is_a_method(cls, options, cap_s) -> None:
    assert isinstance(cls, type) and issubclass(cls, Method), f"{cls} is not a Method subclass"
    assert isinstance(cls.name, str) and cls.name, f"{cls.__name__}.name must be a non-empty str"


def check_constructor_stores_options(cls, options, cap_s) -> None:
    method = cls(**options)
    for key, value in options.items():
        assert getattr(method, key, None) == value, \
            f"the constructor must store option {key!r} unchanged (scikit-learn style)"
    state = [a for a in vars(method) if a.endswith("_") and not a.startswith("_")]
    assert not state, f"the constructor sets state {state}: do that in start()"


def check_does_not_use_ray(cls, options, cap_s) -> None:
    _check_no_ray(cls)


def check_hooks_raise_nothing(cls, options, cap_s) -> None:
    """start, suggest, on_report and on_result raise nothing on a tiny live campaign (an
    error there is the method's bug; an error in fit is a failed trial)."""
    run = _live_run(cls, options, cap_s)
    if isinstance(run.error, BadSuggestion):  # named by check suggests_inside_the_space
        return
    if isinstance(run.error, BenchError):  # how start refuses bad options: not a bug
        raise AssertionError(f"the method refused the options {options}: {run.error} (give "
                             "check_method options it accepts; certify refusals with "
                             "bad_options=[...])")
    assert run.error is None, f"a hook of the method raised: {_error_text(run.error)}"


def _finished(run: _LiveRun) -> None:
    assert run.error is None, ("the tiny campaign stopped early (see check "
                               f"hooks_raise_nothing): {run.error}")


def check_writes_no_files(cls, options, cap_s) -> None:
    run = _live_run(cls, options, cap_s)
    for wrapper in run.watched:
        assert not wrapper.violations, wrapper.violations[0]


def check_suggests_inside_the_space(cls, options, cap_s) -> None:
    """Every suggestion names the space's parameters (a learned method: those it does not
    learn), each a finite value inside its range or one of its grid values: the campaign
    refuses any other (``BadSuggestion``), live and in replay."""
    run = _live_run(cls, options, cap_s)
    assert not isinstance(run.error, BadSuggestion), str(run.error)


def check_survives_a_failed_trial(cls, options, cap_s) -> None:
    run = _live_run(cls, options, cap_s)
    _finished(run)
    tuning = run.tuning()
    assert tuning, "the method suggested no trial"
    assert tuning[0][S.STATUS] == S.FAILED, "the injected failure was not recorded as failed"
    capped = run.campaign.spent_s >= run.campaign.cap_s  # the cap ended it, not the method
    assert len(tuning) > 1 or run.campaign.method_done or capped, \
        "the method stopped after a failed trial"


def check_some_trials_succeed(cls, options, cap_s) -> None:
    """Besides the injected failure, some trial ends ok: a method whose every trial fails
    (e.g. its fit reads a metric that is not there) is broken, not unlucky."""
    run = _live_run(cls, options, cap_s)
    _finished(run)
    tuning = run.tuning()
    if not any(r[S.STATUS] == S.OK for r in tuning) and run.campaign.spent_s >= cap_s and \
            all(r[S.STATUS] == S.OVER_BUDGET for r in tuning[1:]):
        raise AssertionError(f"the cap ({cap_s:g} s) was spent before any trial could end: "
                             "run check_method with a larger cap_s")
    assert any(r[S.STATUS] == S.OK for r in tuning), _all_failed(tuning)


def _all_failed(rows: list[dict]) -> str:
    failed = [r for r in rows if r[S.STATUS] == S.FAILED]
    first = failed[1] if len(failed) > 1 else (failed[0] if failed else None)  # [0]: injected
    why = "" if first is None else \
        f"; trial {first[S.TRIAL_ID]}: {first[S.ERROR]}\n{first.get('error_trace') or ''}"
    return f"no trial ended ok ({len(rows)} trials: " \
        f"{', '.join(sorted({r[S.STATUS] for r in rows})) or 'none'}){why}"


def check_honours_the_cap(cls, options, cap_s) -> None:
    run = _live_run(cls, options, cap_s)
    _finished(run)
    tuning = run.tuning()
    spent = sum(r[S.RESOURCE_S] for r in tuning)
    longest = max((r[S.RESOURCE_S] for r in tuning), default=0.0)
    assert spent <= cap_s + longest, f"tuning compute {spent:.1f}s overran the cap {cap_s}s"


def check_learned_sees_no_validation(cls, options, cap_s) -> None:
    run = _live_run(cls, options, cap_s)
    _finished(run)
    assert not any(w.validation_seen_by_learned for w in run.watched), \
        "a learned-hyperparameter method received validation data"
    kinds = {r[S.KIND] for r in run.tuning()}
    kind = "search" if cls.uses_validation else "learned"
    assert kinds <= ({S.SEARCH} if cls.uses_validation else {S.LEARNED}), \
        f"trials of kinds {sorted(kinds)} from a {kind} method"


def check_replays_on_recorded_runs(cls, options, cap_s) -> None:
    """In replay (``context.discrete``) every suggestion has a recorded run: the method
    picks each hyperparameter from ``param.grid``. For search methods (``replayable``); a
    pruning one replays on recorded per-epoch validation curves and hears them."""
    run = _replay_run(cls, options)
    assert run.error is None, f"the replay on {run.records} stopped: {_error_text(run.error)}"
    tuning = [r for r in run.rows if r[S.KIND] != S.RETRAIN]
    assert tuning, "the method suggested no trial in replay"
    missing = [r for r in tuning if (r[S.ERROR] or "").startswith("no recorded")]
    assert not missing, (f"{len(missing)} of {len(tuning)} replayed trials have no record, "
                         f"e.g. {missing[0][S.ERROR]}: when context.discrete, suggest only "
                         "values of each param.grid")
    assert any(r[S.STATUS] == S.OK for r in tuning), _all_failed(tuning)
    if prunes(cls, options):  # the records' curves reached on_report
        assert any(r.get(S.VAL_NLL) is not None for r in run.reports), \
            f"no replayed epoch report carried val_nll (records {run.records})"


def check_is_deterministic(cls, options, cap_s) -> None:
    """The same seed gives the same suggestions and decisions: the tiny live campaign's
    journal is restored into a fresh method (what ``bench run --resume`` does: the method
    hears the same results and must suggest what the journal holds, and decide the same
    on each epoch report), and a replayable method's replay runs twice."""
    run = _live_run(cls, options, cap_s)
    _finished(run)
    again = _Watched(cls(**options), fail_first_fit=False)
    try:
        campaign = _tiny_campaign(again, cap_s)
        completed = {e["trial"] for e in run.journal if event_kind(e) == Event.COMPLETE}
        for line in run.journal:
            campaign.restore(line, completed)
    except (BenchError, MethodHookError) as err:
        why = str(err).split(": ", 1)[-1] if isinstance(err, BenchError) else _error_text(err)
        raise AssertionError(f"asked again with the same seed and results, the method "
                             f"differs: {why}. {_SEEDED}") from None
    first = run.watched[0]
    _same("suggest()", first.suggestions, again.suggestions)
    _same("on_report()", first.decisions, again.decisions)
    if replayable(cls):
        rows = [[(r[S.TRIAL_ID], r[S.CONFIG], r[S.STATUS]) for r in _replay_run(
            cls, options, attempt).rows if r[S.KIND] != S.RETRAIN] for attempt in (1, 2)]
        _same("the replayed trials", rows[0], rows[1])


_SEEDED = ("Draw every random number from a generator seeded by context.seed, and decide "
           "only on what the hooks were told: bench run --resume asks the method again")


def _same(what: str, first: list, second: list) -> None:
    for k, (one, two) in enumerate(zip(first, second)):
        assert one == two, (f"{what} differs between two runs with the same seed, at #{k}: "
                            f"{one} then {two}. {_SEEDED}")
    assert len(first) == len(second), \
        f"{what}: {len(first)} answers, then {len(second)} with the same seed. {_SEEDED}"


def check_refuses_bad_options(cls, options, cap_s, bad_options=()) -> None:
    """Each set of ``bad_options`` is stored by the constructor and refused by ``start``
    with a one-line ``BenchError`` (what the harness shows the user, exit status 2)."""
    context = Context.of(TINY_TASK, 0, Budget(workers=1, cap_s=cap_s))
    for bad in bad_options:
        try:
            method = cls(**bad)
        except Exception as err:  # noqa: BLE001 - named below
            raise AssertionError(f"the constructor raised for bad options {bad}: "
                                 f"{type(err).__name__}: {err}; store options as given and "
                                 "refuse them in start()") from None
        try:
            method.start(context)
        except BenchError as err:
            assert "\n" not in str(err).strip(), \
                f"start() refused bad options {bad} in more than one line: {str(err)!r}"
            continue
        except Exception as err:  # noqa: BLE001 - named below
            raise AssertionError(f"start() refused bad options {bad} with "
                                 f"{type(err).__name__}: {err}; raise BenchError (one line) "
                                 "for a bad option") from None
        raise AssertionError(f"start() accepted bad options {bad}: raise BenchError for them")


CHECKS: dict[str, Callable] = {
    "is_a_method": check_is_a_method,
    "constructor_stores_options": check_constructor_stores_options,
    "refuses_bad_options": check_refuses_bad_options,
    "does_not_use_ray": check_does_not_use_ray,
    "hooks_raise_nothing": check_hooks_raise_nothing,
    "writes_no_files": check_writes_no_files,
    "suggests_inside_the_space": check_suggests_inside_the_space,
    "survives_a_failed_trial": check_survives_a_failed_trial,
    "some_trials_succeed": check_some_trials_succeed,
    "honours_the_cap": check_honours_the_cap,
    "learned_sees_no_validation": check_learned_sees_no_validation,
    "replays_on_recorded_runs": check_replays_on_recorded_runs,
    "is_deterministic": check_is_deterministic,
}


def replayable(cls: type[Method]) -> bool:
    """Whether the replay check applies: search methods only (a pruning one on recorded
    per-epoch validation curves); learned methods are never replayed, nor is a method that
    searches a space of its own (``searched_space``): records do not span it."""
    return bool(cls.uses_validation) and cls.searched_space is Method.searched_space


@dataclass(frozen=True)
class Check:
    """One named check of one method: call it; an AssertionError names the check."""

    name: str
    method: type
    options: tuple[tuple[str, Any], ...]
    cap_s: float
    bad_options: tuple[dict, ...] = ()

    @property
    def id(self) -> str:
        return f"{getattr(self.method, '__name__', self.method)}-{self.name}"

    def __call__(self) -> None:
        extra = (self.bad_options,) if self.name == "refuses_bad_options" else ()
        try:
            CHECKS[self.name](self.method, dict(self.options), self.cap_s, *extra)
        except AssertionError as err:
            who = getattr(self.method, "__name__", self.method)
            raise AssertionError(f"check {self.name} failed for {who}: {err}") from None


def method_checks(cls: type[Method], options: dict | None = None, cap_s: float = 20.0,
                  bad_options: list[dict] | None = None) -> list[Check]:
    """The named checks that apply to ``cls`` with ``options``, in order (the first ones
    are cheap): the replay only for search methods, ``refuses_bad_options`` only if
    ``bad_options`` (a list of option sets ``start`` must refuse) are given."""
    items = tuple(sorted((options or {}).items()))
    bad = tuple(dict(b) for b in bad_options or ())
    return [Check(name, cls, items, cap_s, bad) for name in CHECKS
            if (name != "replays_on_recorded_runs" or replayable(cls))
            and (name != "refuses_bad_options" or bad)]


def check_method(cls: type[Method], options: dict | None = None, cap_s: float = 20.0,
                 bad_options: list[dict] | None = None) -> dict:
    """Run every check; raise AssertionError from the first that fails (named), else
    return a summary of the tiny live campaign and the replay. Each of ``bad_options``
    (option sets, e.g. ``[{"trials": -1}]``) must be refused with a ``BenchError`` in
    ``start``."""
    for check in method_checks(cls, options, cap_s, bad_options):
        check()
    options = dict(options or {})
    run = _live_run(cls, options, cap_s)
    tuning, rows = run.tuning(), run.campaign.rows
    summary = {"trials": len(tuning), "ok": sum(r[S.STATUS] == S.OK for r in tuning),
               "retrains": len(rows) - len(tuning),
               "tuning_s": sum(r[S.RESOURCE_S] for r in tuning)}
    if replayable(cls):
        replayed = [r for r in _replay_run(cls, options).rows if r[S.KIND] != S.RETRAIN]
        summary |= {"replayed": len(replayed),
                    "replayed_ok": sum(r[S.STATUS] == S.OK for r in replayed),
                    "replayed_repeats": sum(r[S.STATUS] == S.REPEAT for r in replayed),
                    "replayed_pruned": sum(r[S.STATUS] == S.PRUNED for r in replayed)}
    return summary | {"bad_options_refused": len(bad_options or ())}


def parametrize_with_checks(methods):
    """A pytest ``parametrize`` mark over every check of every method (a class, a
    ``(class, options)`` pair or a ``(class, options, bad_options)`` triple), with ids like
    ``UniformRandom-some_trials_succeed``::

        @parametrize_with_checks([(UniformRandom, {"trials": 4}, [{"trials": 0}])])
        def test_my_method(check):
            check()
    """
    import pytest

    checks = [c for m in methods for c in (
        method_checks(m[0], m[1], bad_options=m[2] if len(m) > 2 else None)
        if isinstance(m, tuple) else method_checks(m))]
    return pytest.mark.parametrize("check", checks, ids=[c.id for c in checks])
