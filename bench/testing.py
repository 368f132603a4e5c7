"""``check_method``: certify that a tuning method obeys the plugin contract.

Like scikit-learn's ``check_estimator``: one call runs the method through a tiny real task
(digits, the pretrained small CNN at 8 px) with the harness's own campaign code and checks
that it
- is a ``bench.method.Method`` with a name, whose constructor only stores its options;
- does not import Ray and writes no file from any hook;
- suggests configurations inside its search space;
- survives a failing trial, and stops suggesting once the compute cap is spent;
- as a learned-hyperparameter method, never receives validation data.
Raises AssertionError naming the first broken rule.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import types
from dataclasses import replace
from typing import Any

from bench import schema as S
from bench.campaign import Campaign, run_inline
from bench.method import FitData, Method, search_space
from bench.suite import Budget
from bench.task import Task

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


def _in_space(config: dict, space, learned: bool) -> None:
    """Search methods set every hyperparameter; learned ones only what they don't learn."""
    names = {p.name for p in space}
    ok = set(config) <= names if learned else set(config) == names
    assert ok, f"suggested keys {sorted(config)} do not fit the space {sorted(names)}"
    for p in space:
        if p.name not in config:
            continue
        v = float(config[p.name])
        assert p.low - 1e-12 <= v <= p.high + 1e-12 or v in p.grid, \
            f"{p.name}={v} is outside [{p.low}, {p.high}] and not a grid value"


def check_method(cls: type[Method], options: dict | None = None, cap_s: float = 20.0) -> dict:
    """Run the contract checks; return a summary of the tiny campaign that ran."""
    options = dict(options or {})
    assert isinstance(cls, type) and issubclass(cls, Method), f"{cls} is not a Method subclass"
    assert isinstance(cls.name, str) and cls.name, f"{cls.__name__}.name must be a non-empty str"
    method = cls(**options)
    for key, value in options.items():
        assert getattr(method, key, None) == value, \
            f"the constructor must store option {key!r} unchanged (scikit-learn style)"
    learned = [a for a in vars(method) if a.endswith("_") and not a.startswith("_")]
    assert not learned, f"the constructor sets state {learned}: do that in start()"
    _check_no_ray(cls)

    tempfile.gettempdir()  # Python probes the temp dir by writing once; not the method's doing
    watched = _Watched(method, fail_first_fit=False)
    campaign = Campaign("check", TINY_TASK, cls.name, watched, seed=0,  # type: ignore[arg-type]
                        budget=Budget(workers=1, cap_s=cap_s), clock0=time.perf_counter())
    campaign.worker_method = _Watched(campaign.worker_method, fail_first_fit=True)
    space = search_space(TINY_TASK)
    original = campaign.next_config

    def checked_next(trial_id):
        config = original(trial_id)
        if isinstance(config, dict) and config["kind"] != S.RETRAIN:
            _in_space(config["hp"], space, learned=not cls.uses_validation)
        return config

    campaign.next_config = checked_next
    run_inline(campaign)

    for wrapper in (watched, campaign.worker_method):
        assert not wrapper.violations, wrapper.violations[0]
    rows = campaign.rows
    tuning = [r for r in rows if r[S.KIND] != S.RETRAIN]
    assert tuning, "the method suggested no trial"
    assert tuning[0][S.STATUS] == S.FAILED, "the injected failure was not recorded as failed"
    assert len(tuning) > 1 or campaign.method_done, "the method stopped after a failed trial"
    spent = sum(r[S.RESOURCE_S] for r in tuning)
    longest = max(r[S.RESOURCE_S] for r in tuning)
    assert spent <= cap_s + longest, f"tuning compute {spent:.1f}s overran the cap {cap_s}s"
    assert not campaign.worker_method.validation_seen_by_learned, \
        "a learned-hyperparameter method received validation data"
    kinds = {r[S.KIND] for r in tuning}
    assert kinds == ({S.SEARCH} if cls.uses_validation else {S.LEARNED}), kinds
    return {"trials": len(tuning), "ok": sum(r[S.STATUS] == S.OK for r in tuning),
            "retrains": len(rows) - len(tuning), "tuning_s": spent}
