"""A trial run one message at a time, for a backend that talks to a long-lived worker by
calls (``bench.driver.ray_pool``): ``start`` returns the trial's first message, each ``step``
passes the driver's decision on the last report and returns the next. The trial runs in a
thread of its own, so the worker answers between its reports; no Ray here.

A trial that its method may prune waits at each report for the decision, so that it stops
exactly where the method said. Any other trial goes on training while the driver reads its
report; a stop (the cap is spent: a decision that depends on timing anyway) then takes
effect at its next report, and the driver keeps the report it stopped the trial at."""

from __future__ import annotations

import dataclasses
import queue
import threading

from bench.contract.protocol import EpochReport, FinalResult, TrialRequest
from bench.worker.trial import TrialSpec, execute_trial


class Stopped(BaseException):
    """The driver stopped the trial at a report: it unwinds the fit at once, as Ray Tune
    ends a stopped trial (no evaluation, no final result). A BaseException, so that the
    trial's own error handling lets it through."""


class TrialStepper:
    """One trial at a time. Messages: an ``EpochReport``, then (after ``step``) the next
    report, until a ``FinalResult``, or None once the driver stopped the trial."""

    def __init__(self, node: str | None = None) -> None:
        self.node = node
        self._messages: queue.SimpleQueue = queue.SimpleQueue()
        self._decisions: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()  # a trial that does not wait: stop at its next report
        self._waits = True
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(self, request: TrialRequest, spec: TrialSpec,
              wait: bool = True) -> EpochReport | FinalResult:
        """Start ``request``; ``wait``: at each report, wait for the driver's decision."""
        if self._thread is not None:
            raise RuntimeError(f"trial {request.trial}: this worker is still running a trial")
        self._waits = wait
        self._stop.clear()

        def emit(report: EpochReport) -> bool:
            if self._stop.is_set():  # stopped at an earlier report
                raise Stopped()
            self._messages.put(dataclasses.replace(report, node=self.node or report.node))
            if wait and self._decisions.get():
                raise Stopped()
            return False

        def run() -> None:
            try:
                final = execute_trial(request, spec, emit)
                self._messages.put(dataclasses.replace(final, node=self.node or final.node))
            except Stopped:
                self._messages.put(None)
            except BaseException as err:  # noqa: BLE001 - the driver hears of it, never a hang
                self._messages.put(err)

        self._thread = threading.Thread(target=run, name=f"trial {request.trial}", daemon=True)
        self._thread.start()
        return self._next()

    def step(self, stop: bool) -> EpochReport | FinalResult | None:
        """The decision on the last report (True: stop), and the trial's next message."""
        if self._thread is None:
            raise RuntimeError("no trial is running on this worker")
        if self._waits:
            self._decisions.put(bool(stop))
        elif stop:
            self._stop.set()
        return self._next()

    def _next(self) -> EpochReport | FinalResult | None:
        message = self._messages.get()
        if not isinstance(message, EpochReport):  # the trial's thread has ended
            self._thread.join()
            self._thread = None
        if isinstance(message, BaseException):
            raise message
        return message
