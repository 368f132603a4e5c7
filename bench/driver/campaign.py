"""The driver-side state of one (task, method, seed) campaign, shared by every backend:
which trials ran with which configuration, the incumbent and its retrains, the tuning
compute spent against the cap, and the records. ``run_inline`` runs a campaign one trial
at a time in this process (tests, ``check_method``); ``bench.driver.ray_runner`` runs it on Ray."""

from __future__ import annotations

import copy
import itertools
import json
import time
import traceback
from typing import TYPE_CHECKING, Callable

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.method import FINISHED, Context, Method, Result
from bench.contract.protocol import (SCORES, Decision, EpochReport, Event, FinalResult,
                                     TrialRequest, event, event_kind)
from bench.contract.space import suggestion_problems
from bench.driver.budget import Budget

if TYPE_CHECKING:  # torch: a replay's campaigns run on records, and never import it
    from bench.zoo.task import Task


class MethodHookError(RuntimeError):
    """A method's own hook (start, suggest, on_report, on_result) raised: a bug in the
    method, not a failed trial. Names the method and the hook; ``trace`` holds the
    traceback as it was raised."""

    def __init__(self, label: str, hook: str, error: BaseException) -> None:
        first = (str(error).strip().splitlines() or [""])[0]
        super().__init__(f"method {label!r} raised in {hook}(): {type(error).__name__}: "
                         f"{first}")
        self.label, self.hook = label, hook
        self.trace = traceback.format_exc()


class BadSuggestion(MethodHookError):
    """A method's ``suggest`` gave a configuration the space does not hold (a missing or
    extra name, a value that is no finite number, outside its range, or in a replay none of
    the recorded values): a bug in the method, never trained with a default in its place."""

    def __init__(self, label: str, trial: str, problems: list[str]) -> None:
        RuntimeError.__init__(self, f"method {label!r} suggest() gave trial {trial} a bad "
                                    f"configuration: {'; '.join(problems)}")
        self.label, self.hook, self.trace = label, "suggest", ""


class Campaign:
    """Driver-side state of one (task, method, seed): trials, incumbent, compute spent.

    Trials are named by the campaign (``t0000``, ``t0001``, ...; a retrain ``t0003-retrain``),
    not by the backend, so records of two runs line up and a resumed run goes on counting.
    The records are deterministic for a given seed whenever the cap does not bind and the
    method does not prune, whatever order parallel trials finish in:
    - the incumbent, and with it which trials are retrained, is followed in trial order;
    - a method hears results in trial order and lagged: the j-th suggestion is asked for
      knowing exactly the results of trials 0 .. j - workers (one worker: all before it).
    Every decision is also sent to ``log`` (the run's journal) as a ``bench.contract.protocol``
    event, and can be restored (``restore``) to rebuild the campaign after the driver died.

    A campaign never pays twice for a configuration: a tuning suggestion equal to an
    earlier one (same kind and hyperparameters; the seed is the campaign's) is not run but
    answered from the earlier run's result, recorded with status ``repeat`` at no compute
    (``info`` names the run: ``repeat_of``), and told to the method as that run's result.
    Training is deterministic for a seed, so that result is what running it would give.
    An earlier run still going holds the repeat until it finishes; an earlier run that
    failed or was stopped by the cap found nothing, so the repeat runs."""

    def __init__(self, suite: str, task: Task, label: str, method: Method, seed: int,
                 budget: Budget, clock0: float, on_record=None,
                 clock: Callable[[], float] = time.perf_counter, discrete: bool = False,
                 plugin: str | None = None) -> None:
        self.suite, self.task, self.label, self.method = suite, task, label, method
        self.plugin = plugin or method.name  # recorded beside the label
        self.seed, self.budget, self.clock0 = seed, budget, clock0
        self.on_record = on_record
        self.log: Callable[[dict], None] | None = None  # journal, set by the queue
        self.index = 0  # which campaign of the suite (its plan's index), set by the queue
        self.clock = clock  # wall time, or a replay's simulated time
        self.requests: dict[str, TrialRequest] = {}  # every trial issued, by its own id
        self.config_text: dict[str, str] = {}  # its configuration as its record's text
        self.alias: dict[str, str] = {}  # backend trial id -> campaign trial id
        self.started: dict[str, float] = {}
        self.stopped_as: dict[str, str] = {}
        self.last_report: dict[str, EpochReport] = {}  # a running trial's last report
        self.rows: list[dict] = []
        self.reports: list[dict] = []
        self.retrain_queue: list[tuple[dict, str]] = []
        self.rerun: list[str] = []  # trials cut short by a dead driver, to run again
        self.tuning_order: list[str] = []  # tuning trials in suggestion order
        self.finished: dict[str, dict] = {}  # tuning rows by trial id
        self.followed = 0  # tuning trials the incumbent has been followed through
        self.told = 0  # tuning trials whose result the method has heard
        self.best: tuple[float, str] | None = None
        self.done_ids: set[str] = set()  # trials with a row
        self.open_: dict[str, None] = {}  # trials issued without a row yet, in issue order
        self.first_run: dict[str, str] = {}  # kind + configuration -> the trial that ran it
        self.repeat_of: dict[str, str] = {}  # repeated trial -> the trial that answers it
        #: what picks the incumbent among search trials (lower is better): validation NLL,
        #: or "clml" (minus the conditional log marginal likelihood, recorded runs only)
        self.select_by = getattr(method, "select_by", "val_nll")
        self.spent_s = 0.0
        self.method_done = False
        context = Context.of(task, seed, budget, discrete)
        self.space, self.discrete = context.space, discrete  # suggestions are checked on it
        self.cap_s = context.cap_s
        self.worker_method = copy.deepcopy(method)  # unstarted: workers only call fit()
        self._hook("start", context)
        self.space = self._hook("searched_space") or self.space

    def _hook(self, name: str, *args):
        """Call the method's hook ``name``; what it raises is the method's fault, never
        a trial's (bad input, ``BenchError``, stays what it is)."""
        try:
            return getattr(self.method, name)(*args)
        except (BenchError, MethodHookError):
            raise
        except Exception as err:  # noqa: BLE001 - any bug of a plugin
            raise MethodHookError(self.label, name, err) from err

    @property
    def res(self) -> float:
        """Compute charged per wall second of a trial, in the budget's unit."""
        return self.budget.charge_rate

    def running(self) -> list[str]:
        """Trials started or pending, of any kind, not yet complete."""
        return list(self.open_)  # kept as trials are issued and finish: asked per report

    def running_tuning(self) -> list[str]:
        """Running trials that count against the cap (all but retrains)."""
        return [t for t in self.running() if self.requests[t].kind != S.RETRAIN]

    def tuning_spent(self) -> float:
        """Finished tuning trials' compute plus what running ones have used so far (asked
        at every report: read in place rather than through ``running_tuning``)."""
        now, started, requests, res = self.clock(), self.started, self.requests, self.res
        return self.spent_s + sum((now - started[t]) * res for t in self.open_
                                  if t in started and requests[t].kind != S.RETRAIN)

    def over_cap(self) -> bool:
        return self.tuning_spent() >= self.cap_s

    # -- called by the backends (Ray, replay or inline) with their own trial ids

    def next_request(self, trial_id: str) -> TrialRequest | str | None:
        """The next trial to run as backend trial ``trial_id``; None: ask again later;
        FINISHED: nothing left."""
        own = self._next_trial()
        if own is None or own == FINISHED:
            return own
        self.alias[trial_id] = own
        return self.requests[own]

    def _next_trial(self):
        if self.rerun:
            return self.rerun.pop(0)
        if self.retrain_queue:
            return self._issue_retrain()
        while not self.method_done and not self.over_cap():
            j = len(self.tuning_order)
            if not self._tell_upto(j - self.budget.workers + 1):
                return None  # wait: the j-th suggestion must know exactly trials < j - W + 1
            config = self._hook("suggest", self._tuning_id(j))
            if config is None:
                self._tell_upto(len(self.tuning_order))  # the method waits for results
                return None if self.running_tuning() else self._stalled()
            if config == FINISHED:
                self.method_done = True
                self._tell_upto(len(self.tuning_order))
                break
            if problems := suggestion_problems(config, self.space, self.discrete,
                                               learned=not self.method.uses_validation):
                raise BadSuggestion(self.label, self._tuning_id(j), problems)
            own = self._issue_tuning(config)
            if own not in self.repeat_of or not self._settle_repeat(own):
                return own
            # a repeat costs nothing: answered (or held for its earlier run); ask again
        # nothing new: wait while running trials may still produce an incumbent to retrain
        return None if self.running_tuning() else FINISHED

    @staticmethod
    def _tuning_id(j: int) -> str:
        return f"t{j:04d}"

    def _issue_tuning(self, config: dict) -> str:
        own = self._tuning_id(len(self.tuning_order))
        kind = S.SEARCH if self.method.uses_validation else S.LEARNED
        hp = {k: float(v) for k, v in config.items()}
        self.requests[own] = TrialRequest(self.index, own, kind, hp)
        self.config_text[own] = _config_text(hp)
        self.open_[own] = None
        self.tuning_order.append(own)
        key = self._run_key(own)
        if key in self.first_run:
            self.repeat_of[own] = self.first_run[key]
        else:
            self.first_run[key] = own
        self._log(Event.SUGGEST, trial=own, hp=hp)
        return own

    def _issue_retrain(self) -> str:
        hp, of = self.retrain_queue.pop(0)
        own = f"{of}-retrain"
        self.requests[own] = TrialRequest(self.index, own, S.RETRAIN, hp, retrain_of=of)
        self.config_text[own] = _config_text(hp)
        self.open_[own] = None
        self._log(Event.SUGGEST, trial=own, hp=hp, retrain_of=of)
        return own

    def _settle_repeat(self, own: str) -> bool:
        """Answer a repeated configuration from its earlier run, or hold it until that run
        finishes (True); False: the earlier run found nothing, so this one must run."""
        earlier = self.finished.get(self.repeat_of[own])
        if earlier is None:
            return True
        if earlier[S.STATUS] not in (S.OK, S.PRUNED):
            self._runs_again(own)
            return False
        now = self.clock() - self.clock0
        info = json.loads(earlier[S.INFO]) if isinstance(earlier.get(S.INFO), str) else {}
        row = {**earlier, S.TRIAL_ID: own, S.STATUS: S.REPEAT, S.STARTED_S: now,
               S.ENDED_S: now, S.WALL_S: 0.0, S.RESOURCE_S: 0.0, S.CPU_S: 0.0, S.GPU_S: 0.0,
               S.TRAIN_S: None, S.EVAL_S: None, S.OVERHEAD_S: 0.0, S.NODE: None,
               S.INFO: json.dumps({**info, "repeat_of": earlier[S.TRIAL_ID]}, sort_keys=True)}
        self._log(Event.COMPLETE, trial=own, row=row)
        self._finish(row)
        return True

    def _run_key(self, own: str) -> str:
        """What makes two tuning requests the same run (the seed is the campaign's)."""
        return f"{self.requests[own].kind} {self.config_text[own]}"

    def _runs_again(self, own: str) -> None:
        """``own`` repeats a run that found nothing: it runs, and answers later repeats."""
        del self.repeat_of[own]
        self.first_run[self._run_key(own)] = own

    def _stalled(self):
        self.method_done = True  # waiting on nothing would spin forever
        return FINISHED

    def _own(self, trial_id: str) -> str:
        return self.alias.get(trial_id, trial_id)

    def prunes(self, trial_id: str) -> bool:
        """Whether the method may prune this trial at a report (a search trial of a method
        with its own ``on_report``): its worker then waits for each decision."""
        return self.requests[self._own(trial_id)].kind == S.SEARCH and self._has_on_report

    @property
    def _has_on_report(self) -> bool:
        """Not Method's default (which prunes nothing); a wrapper that forwards its hooks
        by name (``bench.testing``'s) is asked."""
        return getattr(type(self.method), "on_report", None) is not Method.on_report

    def trial_started(self, trial_id: str) -> None:
        self.started.setdefault(self._own(trial_id), self.clock())

    def trial_report(self, trial_id: str, report: EpochReport) -> Decision:
        """Record an epoch report and decide: go on, or stop the trial (over the cap, or
        pruned by the method)."""
        own = self._own(trial_id)
        kind = self.requests[own].kind
        values = report.values
        metrics = {k: values[k] for k in (S.TRAIN_LOSS, S.VAL_NLL, S.VAL_ACC) if k in values}
        # everything else the method reported (learned hyperparameters, marginal
        # likelihoods) goes to the metrics column, by its own keys
        extra = {k: v for k, v in values.items()
                 if k not in metrics and k != S.EPOCH and _is_number(v)}
        row = {S.STEP: report.step, S.EPOCH: values.get(S.EPOCH), **metrics,
               S.METRICS: json.dumps(extra, sort_keys=True) if extra else None}
        self.reports.append(self._report_row(own, row))
        self.last_report[own] = report
        decision, asked = Decision.CONTINUE, False
        if kind != S.RETRAIN and self.over_cap():
            self.stopped_as[own] = S.OVER_BUDGET
            decision = Decision.STOP
        elif kind == S.SEARCH:
            asked = True  # the default on_report prunes nothing: not called
            if self._has_on_report and self._hook("on_report", own, report.step, metrics):
                self.stopped_as[own] = S.PRUNED
                decision = Decision.STOP
        self._log(Event.REPORT, trial=own, report=row, asked=asked)
        return decision

    def _report_row(self, own: str, report: dict) -> dict:
        return {S.SUITE: self.suite, S.TASK: self.task.name, S.METHOD: self.label,
                S.SEED: self.seed, S.TRIAL_ID: own, **report}

    def trial_complete(self, trial_id: str, final: FinalResult | None, error: bool = False,
                       reason: str | None = None) -> None:
        """Record a trial that ended: by itself (``final``), stopped at a report (no
        final: what it had measured by its last report is kept), or lost by the backend
        (``error``, with the backend's ``reason`` where it has one)."""
        ended = self.clock()
        own = self._own(trial_id)
        request = self.requests[own]
        started = self.started.get(own, ended)
        if own in self.stopped_as:
            status = self.stopped_as[own]
        elif error or final is None:
            status = S.FAILED
        else:
            status = final.status
        wall = ended - started
        last = self.last_report.pop(own, None)
        if final is not None:
            steps_done, train_s, eval_s = final.steps_done, final.train_s, final.eval_s
        else:  # without the loop's own split, the seconds in fit count as training
            steps_done = None if last is None else \
                (last.steps_done if last.steps_done is not None else last.step)
            train_s, eval_s = (None if last is None else last.fit_s), None
        row = {
            S.SUITE: self.suite, S.TASK: self.task.name, S.METHOD: self.label,
            S.PLUGIN: self.plugin, S.SEED: self.seed, S.TRIAL_ID: own, S.KIND: request.kind,
            S.STATUS: status, S.CONFIG: self.config_text[own],
            S.RETRAIN_OF: request.retrain_of,
            S.STARTED_S: started - self.clock0, S.ENDED_S: ended - self.clock0, S.WALL_S: wall,
            # charged in the budget's unit; CPU and GPU time are kept both, always
            S.RESOURCE_S: wall * self.res, S.CPU_S: wall * self.budget.cpus_per_worker,
            S.GPU_S: wall * self.budget.gpus_per_worker,
            S.TRAIN_S: train_s, S.EVAL_S: eval_s,
            S.OVERHEAD_S: wall - (train_s or 0) - (eval_s or 0),
            S.NODE: final.node if final is not None else (last.node if last else None),
            S.STEPS_DONE: steps_done,
            S.ERROR: reason or (final.error if final is not None else None)
            or (FAILED_PROCESS if error else None),
            S.ERROR_TRACE: final.trace if final is not None else None,
            S.INFO: final.info if final is not None else None,
        }
        if status in (S.PRUNED, S.OVER_BUDGET):  # what it was stopped on
            values = {} if last is None else last.values
            row |= {S.VAL_NLL: values.get(S.VAL_NLL), S.VAL_ACC: values.get(S.VAL_ACC)}
        if status == S.OK:
            for key in SCORES:
                row[key] = final.scores.get(key)
            if request.kind == S.SEARCH and self.select_by == "clml":  # the curves too
                clml = row.get(S.VAL_CLML)
                row[S.OBJECTIVE] = None if clml is None or clml != clml else -float(clml)
        self._log(Event.COMPLETE, trial=own, row=row)
        self._finish(row)

    def _finish(self, row: dict, notify: bool = True) -> None:
        self.rows.append(row)
        self.done_ids.add(row[S.TRIAL_ID])
        self.open_.pop(row[S.TRIAL_ID], None)
        if row[S.KIND] != S.RETRAIN:
            self.spent_s += row[S.RESOURCE_S]
            self.finished[row[S.TRIAL_ID]] = row
            if row[S.STATUS] != S.REPEAT and row[S.TRIAL_ID] in self.repeat_of:
                self._runs_again(row[S.TRIAL_ID])  # a journal being replayed: it ran
            self._follow_incumbent()
        if self.on_record and notify:  # before the repeats it answers, recorded below
            self.on_record(self, row)
        if row[S.KIND] != S.RETRAIN:
            if notify:  # repeats held for this run (a journal being replayed has their rows)
                for own in [o for o, e in self.repeat_of.items()
                            if e == row[S.TRIAL_ID] and o not in self.done_ids]:
                    if not self._settle_repeat(own):
                        self.rerun.append(own)
            if self.method_done:
                self._tell_upto(len(self.tuning_order))

    def _follow_incumbent(self) -> None:
        """New incumbents, in trial order, are queued for retraining on all N."""
        while self.followed < len(self.tuning_order) and \
                self.tuning_order[self.followed] in self.finished:
            row = self.finished[self.tuning_order[self.followed]]
            self.followed += 1
            score = self._score(row)
            if row[S.KIND] != S.SEARCH or row[S.STATUS] != S.OK or score is None:
                continue
            improved = self.best is None or score < self.best[0]
            if improved:
                self.best = (score, row[S.TRIAL_ID])
            if improved or self.method.retrain_all:
                self.retrain_queue.append((json.loads(row[S.CONFIG]), row[S.TRIAL_ID]))

    def _tell_upto(self, n: int) -> bool:
        """Tell the method the results of tuning trials before ``n``, in order; False if
        one of them is still running."""
        while self.told < n:
            row = self.finished.get(self.tuning_order[self.told])
            if row is None:
                return False
            self.told += 1
            self._log(Event.TELL, trial=row[S.TRIAL_ID])
            if row[S.STATUS] == S.REPEAT:  # told as the run that answered it
                answer = self.finished[json.loads(row[S.INFO])["repeat_of"]]
                status, score = answer[S.STATUS], self._score(answer)
            else:
                status, score = row[S.STATUS], self._score(row)
            self._hook("on_result", Result(
                row[S.TRIAL_ID], json.loads(row[S.CONFIG]), status,
                score if status == S.OK else None,
                {k: row[k] for k in (S.VAL_NLL, S.VAL_ACC, S.TEST_NLL, S.TEST_ACC)
                 if row.get(k) is not None}))
        return True

    def _score(self, row: dict) -> float | None:
        """What selects among tuning trials, lower is better: a search trial's validation
        NLL (or minus its CLML), a learned run's own objective; None if it has none."""
        if row[S.KIND] == S.SEARCH and self.select_by != "clml":
            score = row.get(S.VAL_NLL)
        else:
            score = row.get(S.OBJECTIVE)
        return None if score is None or score != score else float(score)

    def _log(self, kind: Event, **fields) -> None:
        if self.log:
            self.log(event(kind, self.index, **fields))

    # -- rebuilding from a journal

    def restore(self, line: dict, completed: set[str]) -> None:
        """Re-apply one journal event, without running anything; ``completed`` names the
        trials whose completion the journal holds (reports of others are dropped: those
        trials run again)."""
        own, what = line["trial"], event_kind(line)
        if what == Event.SUGGEST:
            if line.get("retrain_of") is not None:
                got = self._issue_retrain() if self.retrain_queue else None
            else:  # the results it knew were told by the journal's tell events
                config = self._hook("suggest", self._tuning_id(len(self.tuning_order)))
                got = self._issue_tuning(config) if isinstance(config, dict) else None
            if got != own or self.requests[own].hp != line["hp"]:
                now = self.requests.get(got)
                raise BenchError(f"cannot resume {self.task.name} | {self.label} | seed "
                                 f"{self.seed}: the journal has trial {own} at {line['hp']}, "
                                 f"the method now gives {got} at {now and now.hp}")
        elif what == Event.REPORT and own in completed:
            report = line["report"]
            self.reports.append(self._report_row(own, report))
            if line["asked"]:  # the method hears the metrics it heard live
                self._hook("on_report", own, report[S.STEP],
                           {k: report[k] for k in (S.TRAIN_LOSS, S.VAL_NLL, S.VAL_ACC)
                            if k in report})
        elif what == Event.TELL:
            if self.told >= len(self.tuning_order) or self.tuning_order[self.told] != own or \
                    not self._tell_upto(self.told + 1):
                raise BenchError(f"cannot resume {self.task.name} | {self.label} | seed "
                                 f"{self.seed}: the journal tells {own} out of order")
        elif what == Event.COMPLETE:
            self._finish(line["row"], notify=False)

    def restored(self) -> None:
        """After the last journal event: trials the journal started but never finished
        run again, first and under their own names; a repeat whose earlier run has
        finished is answered from it instead."""
        self.rerun = [own for own in self.running()
                      if own not in self.repeat_of or not self._settle_repeat(own)]


FAILED_PROCESS = "trial process failed"


def _config_text(hp: dict[str, float]) -> str:
    """A configuration as its record's text."""
    return json.dumps(hp, sort_keys=True)


class CampaignQueue:
    """The suite's campaigns in order. The next campaign starts as soon as the running ones
    have no trial to offer, so workers idle while a campaign drains its last trials are
    given to the next one; each campaign still runs at most ``workers`` trials at once.
    ``log`` receives every event for the run's journal; ``resume`` restores from one."""

    def __init__(self, plans: list[Callable[[], Campaign]], on_start=None, on_done=None,
                 log: Callable[[dict], None] | None = None) -> None:
        self.plans = plans
        self.on_start, self.on_done = on_start, on_done
        self.active: list[tuple[int, Campaign]] = []
        self.log = log
        self.muted = False  # while restoring from a journal: its events are written already
        self.exhausted: set[int] = set()
        self.next_plan = 0
        self.owner: dict[str, tuple[int, Campaign]] = {}
        self.reasons: dict[str, str] = {}  # why the backend lost a trial

    def suggest(self, trial_id: str) -> TrialRequest | str | None:
        """The next trial for backend trial ``trial_id``, from the running campaigns in
        order, else from the next campaign; None: ask again later; FINISHED: all done."""
        for idx, campaign in list(self.active):
            if idx in self.exhausted:
                continue
            request = campaign.next_request(trial_id)
            if request == FINISHED:
                self.exhausted.add(idx)
                self._maybe_done(idx, campaign)
            elif request is not None:
                self.owner[trial_id] = (idx, campaign)
                return request
        if self.next_plan < len(self.plans):
            self._start(self.next_plan)
            return self.suggest(trial_id)
        return None if self.active else FINISHED

    @property
    def finished(self) -> bool:
        """Every campaign started and done."""
        return not self.active and self.next_plan == len(self.plans)

    def _start(self, idx: int) -> Campaign:
        self.next_plan = idx + 1
        campaign = self.plans[idx]()
        campaign.index = idx
        self.active.append((idx, campaign))
        if self.on_start:
            self.on_start(campaign)
        self._log(event(Event.START, idx))
        campaign.log = self._log if self.log else None
        return campaign

    @property
    def log(self) -> Callable[[dict], None] | None:
        return self._journal

    @log.setter
    def log(self, journal: Callable[[dict], None] | None) -> None:
        """Set (or drop) where events go, for the campaigns running too. Without one,
        campaigns make no events at all (a replay's hundreds of thousands of reports)."""
        self._journal = journal
        for _, campaign in self.active:
            campaign.log = self._log if journal else None

    def _log(self, line: dict) -> None:
        if self._journal and not self.muted:
            self._journal(line)

    def started(self, trial_id: str) -> None:
        if trial_id in self.owner:
            self.owner[trial_id][1].trial_started(trial_id)

    def report(self, trial_id: str, report: EpochReport) -> Decision:
        return self.owner[trial_id][1].trial_report(trial_id, report)

    def prunes(self, trial_id: str) -> bool:
        return self.owner[trial_id][1].prunes(trial_id)

    def failure_reason(self, trial_id: str, error: BaseException) -> None:
        """Why the backend lost a trial (an exception outside the trial's own code, or its
        worker died), kept for its record as one line."""
        text = " ".join(str(error).split())
        self.reasons[trial_id] = f"{type(error).__name__}: {text}"[:500]

    def complete(self, trial_id: str, final: FinalResult | None, error: bool = False) -> None:
        if trial_id not in self.owner:
            return
        reason = self.reasons.pop(trial_id, None) if error else None
        idx, campaign = self.owner[trial_id]
        campaign.trial_complete(trial_id, final, error, reason)
        self._maybe_done(idx, campaign)

    def _maybe_done(self, idx: int, campaign: Campaign) -> None:
        if idx in self.exhausted and not campaign.running() and (idx, campaign) in self.active:
            self.active.remove((idx, campaign))
            self._log(event(Event.DONE, idx))
            if self.on_done:
                self.on_done(campaign)

    def resume(self, lines: list[dict]) -> None:
        """Rebuild the state a journal describes: campaigns started and finished, every
        trial suggested, reported and completed, in the order they happened. Methods are
        asked again and must suggest what the journal holds (they are seeded)."""
        self.restore(lines)
        self.restored()

    def restore(self, lines: list[dict]) -> None:
        """The first half of ``resume``: every check that can refuse the journal (a
        ``BenchError`` naming its line), with no event logged and nothing run. Callbacks
        set on the queue are called as the campaigns are rebuilt (a driver that must not
        write yet sets them after)."""
        completed = {(e["campaign"], e["trial"]) for e in lines
                     if event_kind(e) == Event.COMPLETE}
        campaigns: dict[int, Campaign] = {}
        self.muted = True
        try:
            self._restore(lines, completed, campaigns)
        finally:
            self.muted = False

    def restored(self) -> None:
        """The second half of ``resume``: trials cut short are queued to run again, and
        repeats whose earlier run finished are answered (logged and recorded)."""
        for _, campaign in self.active:
            campaign.restored()

    def _restore(self, lines, completed, campaigns) -> None:
        for number, line in enumerate(lines, 1):  # read_journal keeps every line: N = line N
            idx, kind = line["campaign"], event_kind(line)
            where = f"cannot resume: {S.JOURNAL_FILE} line {number}"
            if kind == Event.START:
                if idx != self.next_plan:
                    raise BenchError(f"{where}: it starts campaign {idx} where "
                                     f"{self.next_plan} comes next")
                campaigns[idx] = self._start(idx)
            elif idx not in campaigns or idx in self.exhausted:
                state = "was never started" if idx not in campaigns else "was done"
                raise BenchError(f"{where}: a {kind.value} event of campaign {idx}, which "
                                 f"{state}")
            elif kind == Event.DONE:
                self.exhausted.add(idx)
                self._maybe_done(idx, campaigns[idx])
            else:
                campaigns[idx].restore(line, {t for c, t in completed if c == idx})


def without_cut_short(lines: list[dict]) -> list[dict]:
    """A journal as a resumed run goes on with it: the report lines of trials it never
    completed are dropped, as that attempt was cut short and its trial runs again from the
    start (whose reports the rerun logs). Applied at every resume, a completed trial's
    report lines are those of the one attempt that completed it, however often the
    driver was killed."""
    completed = {(e["campaign"], e["trial"]) for e in lines
                 if event_kind(e) == Event.COMPLETE}
    return [e for e in lines if event_kind(e) != Event.REPORT
            or (e["campaign"], e["trial"]) in completed]


def run_inline(campaign: Campaign) -> None:
    """Run a campaign's trials one after another in this process. An error of the
    method's own hooks stops the campaign (``MethodHookError``); it is not the trial's."""
    from bench.worker.trial import TrialSpec, execute_trial

    spec = TrialSpec(campaign.task, campaign.seed, campaign.worker_method,
                     threads=max(1, int(campaign.budget.cpus_per_worker)),
                     gpus=campaign.budget.gpus_per_worker)
    for number in itertools.count():
        trial_id = f"inline{number}"
        request = campaign.next_request(trial_id)
        if request in (FINISHED, None):  # None: nothing runs that could change its mind
            return
        campaign.trial_started(trial_id)
        hook_errors: list[MethodHookError] = []

        def emit(report: EpochReport) -> bool:
            try:
                return campaign.trial_report(trial_id, report) == Decision.STOP
            except MethodHookError as err:  # the trial's own error handling must not see it
                hook_errors.append(err)
                return True

        final = execute_trial(request, spec, emit)
        if hook_errors:
            raise hook_errors[0]
        campaign.trial_complete(trial_id, final)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
