"""``check_method``: certify that a tuning method obeys the plugin contract.

Like scikit-learn's ``check_estimator``: the method runs through a tiny real task (digits,
the pretrained small CNN at 8 px) with the harness's own campaign code, and once in replay
on a small recorded table (the published ResNet-50 grid: a discrete space), and named
checks (``CHECKS``) look at what happened. Each failure is an AssertionError that starts
with the check's name. ``method_checks`` gives them one by one and
``parametrize_with_checks`` makes them pytest cases, as scikit-learn's
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
from typing import Any, Callable

from bench.contract import schema as S
from bench.contract.method import FitData, Method
from bench.driver.campaign import (BadSuggestion, Campaign, CampaignQueue, MethodHookError,
                                   run_inline)
from bench.driver.suite import Budget
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
                return attr(*args, **kwargs)
            finally:
                written, _writes = _writes, None
                if written:
                    self.violations.append(f"{type(self._method).__name__}.{name} wrote "
                                           f"files: {written}")

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

    def tuning(self) -> list[dict]:
        return [r for r in self.campaign.rows if r[S.KIND] != S.RETRAIN] if self.campaign else []


@dataclass
class _ReplayRun:
    rows: list[dict] = field(default_factory=list)
    error: BaseException | None = None
    cap_s: float = 0.0


_RUNS: dict[tuple, Any] = {}


def _key(kind: str, cls: type, options: dict, cap_s: float) -> tuple:
    return kind, cls, repr(sorted(options.items())), cap_s


def _live_run(cls: type[Method], options: dict, cap_s: float) -> _LiveRun:
    key = _key("live", cls, options, cap_s)
    if key in _RUNS:
        return _RUNS[key]
    run = _RUNS[key] = _LiveRun()
    tempfile.gettempdir()  # Python probes the temp dir by writing once; not the method's doing
    try:
        watched = _Watched(cls(**options), fail_first_fit=False)
        run.watched.append(watched)
        campaign = Campaign("check", TINY_TASK, cls.name, watched,  # type: ignore[arg-type]
                            seed=0, budget=Budget(workers=1, cap_s=cap_s),
                            clock0=time.perf_counter())
        run.campaign = campaign
        campaign.worker_method = _Watched(campaign.worker_method, fail_first_fit=True)
        run.watched.append(campaign.worker_method)
        run_inline(campaign)  # the campaign checks each suggestion (BadSuggestion)
    except Exception as err:  # noqa: BLE001 - reported by the check hooks_raise_nothing
        run.error = err
    return run


def _recorded():
    """A small recorded table: the published ResNet-50 L2-SP grid (real runs), one task
    and seed of it. Loaded once per process."""
    if "recorded" not in _RUNS:
        from bench.driver.replay import RecordedTask, Recorded, load_records

        recorded = Recorded(load_records(REPLAY_RECORDS))
        name = recorded.tasks()[0]
        mine = recorded.trials[(recorded.trials[S.TASK] == name)
                               & (recorded.trials[S.KIND] == S.SEARCH)]
        seed = int(min(mine[S.SEED]))
        grid_s = float(mine[mine[S.SEED] == seed][S.WALL_S].sum())
        _RUNS["recorded"] = (recorded, RecordedTask(name, recorded.space(name)), seed, grid_s)
    return _RUNS["recorded"]


REPLAY_RECORDS = "published:cifar10-resnet50"


def _replay_run(cls: type[Method], options: dict) -> _ReplayRun:
    key = _key("replay", cls, options, 0.0)
    if key in _RUNS:
        return _RUNS[key]
    from bench.driver.replay import SimulatedClock, simulate

    run = _RUNS[key] = _ReplayRun()
    recorded, task, seed, grid_s = _recorded()
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
    assert kinds <= ({S.SEARCH} if cls.uses_validation else {S.LEARNED}), \
        f"trials of kinds {sorted(kinds)} from a {'search' if cls.uses_validation else 'learned'} method"


def check_replays_on_recorded_runs(cls, options, cap_s) -> None:
    """In replay (``context.discrete``) every suggestion has a recorded run: the method
    picks each hyperparameter from ``param.grid``. Only for methods ``replayable``."""
    run = _replay_run(cls, options)
    assert run.error is None, f"the replay stopped: {_error_text(run.error)}"
    tuning = [r for r in run.rows if r[S.KIND] != S.RETRAIN]
    assert tuning, "the method suggested no trial in replay"
    missing = [r for r in tuning if (r[S.ERROR] or "").startswith("no recorded")]
    assert not missing, (f"{len(missing)} of {len(tuning)} replayed trials have no record, "
                         f"e.g. {missing[0][S.ERROR]}: when context.discrete, suggest only "
                         "values of each param.grid")
    assert any(r[S.STATUS] == S.OK for r in tuning), _all_failed(tuning)


CHECKS: dict[str, Callable] = {
    "is_a_method": check_is_a_method,
    "constructor_stores_options": check_constructor_stores_options,
    "does_not_use_ray": check_does_not_use_ray,
    "hooks_raise_nothing": check_hooks_raise_nothing,
    "writes_no_files": check_writes_no_files,
    "suggests_inside_the_space": check_suggests_inside_the_space,
    "survives_a_failed_trial": check_survives_a_failed_trial,
    "some_trials_succeed": check_some_trials_succeed,
    "honours_the_cap": check_honours_the_cap,
    "learned_sees_no_validation": check_learned_sees_no_validation,
    "replays_on_recorded_runs": check_replays_on_recorded_runs,
}


def replayable(cls: type[Method]) -> bool:
    """Whether the replay check applies: learned methods are never replayed, and pruning
    methods (``reports_validation``) only on records with per-epoch validation metrics (a
    harness run directory), which the small published table has not."""
    return cls.uses_validation and not cls.reports_validation


@dataclass(frozen=True)
class Check:
    """One named check of one method: call it; an AssertionError names the check."""

    name: str
    method: type
    options: tuple[tuple[str, Any], ...]
    cap_s: float

    @property
    def id(self) -> str:
        return f"{getattr(self.method, '__name__', self.method)}-{self.name}"

    def __call__(self) -> None:
        try:
            CHECKS[self.name](self.method, dict(self.options), self.cap_s)
        except AssertionError as err:
            raise AssertionError(f"check {self.name} failed for "
                                 f"{getattr(self.method, '__name__', self.method)}: {err}") from None


def method_checks(cls: type[Method], options: dict | None = None,
                  cap_s: float = 20.0) -> list[Check]:
    """The named checks that apply to ``cls`` with ``options``, in order (the first ones
    are cheap)."""
    items = tuple(sorted((options or {}).items()))
    return [Check(name, cls, items, cap_s) for name in CHECKS
            if name != "replays_on_recorded_runs" or replayable(cls)]


def check_method(cls: type[Method], options: dict | None = None, cap_s: float = 20.0) -> dict:
    """Run every check; raise AssertionError from the first that fails (named), else
    return a summary of the tiny live campaign and the replay."""
    for check in method_checks(cls, options, cap_s):
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
                    "replayed_ok": sum(r[S.STATUS] == S.OK for r in replayed)}
    return summary


def parametrize_with_checks(methods):
    """A pytest ``parametrize`` mark over every check of every method (a class, or a
    ``(class, options)`` pair), with ids like ``UniformRandom-some_trials_succeed``::

        @parametrize_with_checks([(UniformRandom, {"trials": 4})])
        def test_my_method(check):
            check()
    """
    import pytest

    checks = [c for m in methods
              for c in (method_checks(*m) if isinstance(m, tuple) else method_checks(m))]
    return pytest.mark.parametrize("check", checks, ids=[c.id for c in checks])
