"""The trial protocol: what the driver (``bench.driver.campaign``) asks a worker to run, what the
worker reports each epoch and returns at the end, what the driver decides on a report,
and the events the run's journal records.

Every backend speaks it: the Ray actor pool (``bench.driver.ray_pool``), Ray Tune
(``bench.driver.ray_runner``), the replay simulator (``bench.driver.replay``) and the inline
runner; the worker side is ``bench.worker.trial``. On the
wire a message is a plain dict, because Ray Tune passes configurations and results as
dicts (adding fields of its own) and the journal is JSON lines; the ``to_*``/``from_*``
pairs here are the one place those keys are spelled. No torch, Ray or pandas here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from bench.contract import schema as S

#: how a live run's trials run on Ray (``bench run --backend``), the default first: a pool of
#: long-lived actors (``bench.driver.ray_pool``), or one Ray Tune experiment
#: (``bench.driver.ray_runner``)
BACKENDS = ("actors", "tune")
DEFAULT_BACKEND = BACKENDS[0]

PHASE = "phase"  # a result dict's tag: an epoch report or the final result
EPOCH_PHASE, FINAL_PHASE = "epoch", "final"


class Decision(str, enum.Enum):
    """The driver's answer to an epoch report: the words of Ray Tune's TrialScheduler."""

    CONTINUE = "CONTINUE"
    STOP = "STOP"


@dataclass(frozen=True)
class TrialRequest:
    """One trial a campaign asks a backend to run: which campaign of the suite, the
    campaign's own trial id, the kind of run and its hyperparameters; ``retrain_of``
    names the search trial a retrain repeats on all N; ``fault`` is injected on purpose
    (``bench.worker.faults``)."""

    campaign: int
    trial: str
    kind: str  # schema.SEARCH, RETRAIN or LEARNED
    hp: dict[str, float]
    retrain_of: str | None = None
    fault: str | None = None

    def to_config(self) -> dict:
        """The configuration dict a Tune searcher hands to the trainable."""
        return {"campaign": self.campaign, "trial": self.trial, "kind": self.kind,
                "hp": dict(self.hp), "retrain_of": self.retrain_of, "fault": self.fault}

    @classmethod
    def from_config(cls, config: dict) -> TrialRequest:
        return cls(int(config["campaign"]), str(config["trial"]), str(config["kind"]),
                   dict(config["hp"]), config.get("retrain_of"), config.get("fault"))


# keys of an epoch report that the worker adds around the method's own values
_REPORT_ENVELOPE = (PHASE, S.STEP, S.NODE, S.STEPS_DONE, S.FIT_S, S.REPORTED)


@dataclass(frozen=True)
class EpochReport:
    """What a worker reports at an evaluation during training. ``values``: what the
    method reported (train_loss, epoch, val_nll and val_acc when it validates, learned
    hyperparameters, marginal likelihoods, ...); ``steps_done`` and ``fit_s`` what the
    worker had measured by then, kept for a trial stopped at this report."""

    step: int
    values: dict[str, Any] = field(default_factory=dict)
    steps_done: int | None = None
    fit_s: float | None = None
    node: str | None = None

    def to_result(self) -> dict:
        return {PHASE: EPOCH_PHASE, S.STEP: self.step, S.NODE: self.node,
                S.STEPS_DONE: self.steps_done, S.FIT_S: self.fit_s, **self.values,
                S.REPORTED: sorted(self.values)}

    @classmethod
    def from_result(cls, result: dict) -> EpochReport:
        """The report in a result dict; Ray's own fields (pid, timestamp, ...) are left
        out by the worker's list of the method's keys."""
        keys = result.get(S.REPORTED)
        if keys is None:  # a report made without the list (a replayed recorded curve)
            keys = [k for k in result if k not in _REPORT_ENVELOPE]
        return cls(int(result[S.STEP]), {k: result[k] for k in keys if k in result},
                   result.get(S.STEPS_DONE), result.get(S.FIT_S), result.get(S.NODE))


# a final result's scores: what a trial measured on its held-out data, and its objective
SCORES = (S.VAL_NLL, S.VAL_ACC, S.VAL_CLML, S.TEST_NLL, S.TEST_ACC, S.OBJECTIVE)


@dataclass(frozen=True)
class FinalResult:
    """What a worker returns when a trial ends by itself: ``status`` OK with its
    ``scores`` (validation for a search trial, test for a retrain or learned run), or
    FAILED with the ``error`` and its ``trace`` (a failure is a result, never an
    exception)."""

    status: str
    scores: dict[str, float | None] = field(default_factory=dict)
    steps_done: int | None = None
    train_s: float | None = None
    eval_s: float | None = None
    info: str | None = None  # JSON of the method's outputs
    node: str | None = None
    error: str | None = None
    trace: str | None = None
    worker_wall_s: float | None = None

    def to_result(self) -> dict:
        return {PHASE: FINAL_PHASE, S.STATUS: self.status, **self.scores,
                S.STEPS_DONE: self.steps_done, S.TRAIN_S: self.train_s, S.EVAL_S: self.eval_s,
                S.INFO: self.info, S.NODE: self.node, S.ERROR: self.error,
                S.ERROR_TRACE: self.trace, "worker_wall_s": self.worker_wall_s}

    @classmethod
    def from_result(cls, result: dict) -> FinalResult:
        return cls(result.get(S.STATUS, S.FAILED),
                   {k: result[k] for k in SCORES if k in result},
                   result.get(S.STEPS_DONE), result.get(S.TRAIN_S), result.get(S.EVAL_S),
                   result.get(S.INFO), result.get(S.NODE), result.get(S.ERROR),
                   result.get(S.ERROR_TRACE), result.get("worker_wall_s"))


def parse_result(result: dict | None) -> EpochReport | FinalResult | None:
    """A result dict as the backend got it back: an epoch report, a final result, or
    None (no result, or not one of ours)."""
    phase = (result or {}).get(PHASE)
    if phase == EPOCH_PHASE:
        return EpochReport.from_result(result)
    if phase == FINAL_PHASE:
        return FinalResult.from_result(result)
    return None


# -- the journal: one event per driver decision (bench.records.journal writes them)

class Event(str, enum.Enum):
    """The kinds of journal event, in the order a campaign produces them."""

    START = "start"  # a campaign starts (its method's start hook ran)
    SUGGEST = "suggest"  # a trial is issued: trial, hp (retrain_of for a retrain)
    REPORT = "report"  # an epoch report was recorded: trial, report row, asked (pruning)
    TELL = "tell"  # the method heard a tuning trial's result: trial
    COMPLETE = "complete"  # a trial's record row: trial, row
    DONE = "done"  # a campaign has nothing left to run


EVENT = "event"  # an event dict's kind key; every event also names its "campaign"


def event(kind: Event, campaign: int, **fields) -> dict:
    """A journal event as written: ``{"event": kind, "campaign": index, **fields}``."""
    return {EVENT: kind.value, "campaign": campaign, **fields}


def event_kind(line: dict) -> Event | None:
    """The kind of a journal line; None for a kind this version does not know."""
    try:
        return Event(line.get(EVENT))
    except ValueError:
        return None
