"""The campaign's rules, on the simulated (replay) backend: no Ray, no training.

A hand-made record of four configurations gives every trial a known runtime, validation
NLL and retrain; a method that suggests a fixed list and notes what it has heard lets each
expectation below be worked out by hand: which results a suggestion knows (the lag), when
the compute cap stops trials, which trials are retrained, and that a run rebuilt from any
prefix of its journal finishes with the records of the uninterrupted run. A failed trial's
traceback reaches its record."""

import dataclasses
import json
import re

import pandas as pd
import pytest
import torch

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.method import FINISHED, Method
from bench.driver.budget import Budget
from bench.driver.campaign import Campaign, CampaignQueue
from bench.driver.replay import SimulatedClock, simulate
from bench.records.journal import AT, Journal, read_journal
from bench.records.recorded import Recorded, RecordedTask
from bench.records.tables import comparable, frame
from bench.worker.trial import TrialSpec, execute_trial
from bench.zoo.task import Task

TASK = "toy"
SEED = 0
EPOCH_S = 2.0  # simulated epoch reports every 2 s of a trial
RETRAIN_S = 5.0
# lr -> (search runtime in s, validation NLL); each one's retrain takes RETRAIN_S
RUNS = {0.1: (10.0, 0.9), 0.01: (4.0, 1.2), 0.001: (10.0, 0.5), 0.0001: (6.0, 0.7)}
ORDER = [0.1, 0.01, 0.001, 0.0001]  # the method's suggestions, t0000 .. t0003


def _records() -> pd.DataFrame:
    rows = []
    for lr, (wall, nll) in RUNS.items():
        common = {S.TASK: TASK, S.METHOD: "grid", S.SEED: SEED, S.STATUS: S.OK,
                  S.CONFIG: json.dumps({"lr": lr}), S.INFO: json.dumps({"epoch_s": EPOCH_S})}
        rows.append({**common, S.KIND: S.SEARCH, S.WALL_S: wall, S.VAL_NLL: nll})
        rows.append({**common, S.KIND: S.RETRAIN, S.WALL_S: RETRAIN_S, S.TEST_ACC: 1 - nll / 2})
    return frame(rows, S.TRIAL_COLUMNS)


RECORDED = Recorded(_records())


class ListedMethod(Method):
    """Suggests ``configs`` in order; notes which results each suggestion was asked with."""

    name = "listed"

    def __init__(self, configs=(), retrain_all: bool = False) -> None:
        self.configs = configs
        self.retrain_all = retrain_all

    def start(self, context) -> None:
        super().start(context)
        self.pending_ = [dict(c) for c in self.configs]
        self.heard_: list[str] = []
        self.known_at_: dict[str, list[str]] = {}

    def suggest(self, trial_id: str):
        if not self.pending_:
            return FINISHED
        self.known_at_[trial_id] = list(self.heard_)
        return self.pending_.pop(0)

    def on_result(self, result) -> None:
        self.heard_.append(result.trial_id)


def _campaign(method: Method, workers: int = 1, cap_s: float = 1e9,
              clock: SimulatedClock | None = None, recorded: Recorded = RECORDED) -> Campaign:
    task = RecordedTask(TASK, recorded.space(TASK), cap_s)
    return Campaign("test", task, "listed", method, SEED, Budget(workers=workers, cap_s=1e9),
                    0.0, clock=clock, discrete=True)


def _run(workers: int = 1, cap_s: float = 1e9, order=ORDER, retrain_all: bool = False,
         recorded: Recorded = RECORDED):
    """One campaign simulated to its end: (campaign, method)."""
    clock = SimulatedClock()
    method = ListedMethod([{"lr": lr} for lr in order], retrain_all)
    campaign = _campaign(method, workers, cap_s, clock, recorded)
    queue = CampaignQueue([lambda: campaign])
    simulate(queue, recorded, workers, clock)
    assert queue.finished
    return campaign, method


def _rows(campaign: Campaign) -> dict[str, dict]:
    return {r[S.TRIAL_ID]: r for r in campaign.rows}


# -- the lag: the j-th suggestion knows exactly the results of trials 0 .. j - workers


@pytest.mark.parametrize("workers, known", [
    (1, [[], ["t0000"], ["t0000", "t0001"], ["t0000", "t0001", "t0002"]]),
    (2, [[], [], ["t0000"], ["t0000", "t0001"]]),
    (3, [[], [], [], ["t0000"]]),
])
def test_a_suggestion_knows_exactly_the_trials_workers_before_it(workers, known):
    campaign, method = _run(workers)
    assert [method.known_at_[f"t{j:04d}"] for j in range(4)] == known
    # results are heard in trial order, whichever finished first
    assert method.heard_ == ["t0000", "t0001", "t0002", "t0003"]


def test_with_two_workers_a_short_trial_waits_for_the_long_one_before_it():
    # t0000 (10 s) and t0001 (4 s) start at 0. t0002 must know t0000's result, so the
    # worker freed at 4 s idles until 10 s; there t0000 (0.9) and then t0001 (1.2) are
    # followed in trial order, and t0000's retrain runs before t0002 (10..15, 10..20);
    # t0002 (0.5) improves at 20 and its retrain runs 20..25 beside t0003 (15..21).
    campaign, _ = _run(workers=2)
    rows = _rows(campaign)
    spans = {t: (r[S.STARTED_S], r[S.ENDED_S]) for t, r in rows.items()}
    assert spans == {"t0000": (0, 10), "t0001": (0, 4), "t0000-retrain": (10, 15),
                     "t0002": (10, 20), "t0003": (15, 21), "t0002-retrain": (20, 25)}


# -- retraining: new incumbents, followed in trial order


def test_only_new_incumbents_are_retrained_on_all_n():
    # validation NLL in trial order: 0.9, 1.2, 0.5, 0.7 -> incumbents t0000 and t0002
    campaign, _ = _run()
    retrains = [r for r in campaign.rows if r[S.KIND] == S.RETRAIN]
    assert [r[S.TRIAL_ID] for r in retrains] == ["t0000-retrain", "t0002-retrain"]
    assert [r[S.RETRAIN_OF] for r in retrains] == ["t0000", "t0002"]
    assert [json.loads(r[S.CONFIG]) for r in retrains] == [{"lr": 0.1}, {"lr": 0.001}]
    assert [r[S.TEST_ACC] for r in retrains] == [1 - 0.9 / 2, 1 - 0.5 / 2]
    assert campaign.best == (0.5, "t0002")


def test_the_incumbent_follows_trial_order_not_finishing_order():
    # t0001 (lr 0.01, NLL 1.2, 4 s) finishes before t0000 (lr 0.0001, NLL 0.7, 6 s) ...
    campaign, _ = _run(workers=2, order=[0.0001, 0.01])
    # ... yet in trial order 0.7 leads and 1.2 never improves on it
    assert [r[S.RETRAIN_OF] for r in campaign.rows if r[S.KIND] == S.RETRAIN] == ["t0000"]
    # and a method whose better trial comes second retrains both, in trial order
    campaign, _ = _run(workers=2, order=[0.01, 0.0001])
    assert [r[S.RETRAIN_OF] for r in campaign.rows if r[S.KIND] == S.RETRAIN] == \
        ["t0000", "t0001"]


def test_retrain_all_retrains_every_finished_configuration():
    campaign, _ = _run(retrain_all=True)
    assert [r[S.RETRAIN_OF] for r in campaign.rows if r[S.KIND] == S.RETRAIN] == \
        ["t0000", "t0001", "t0002", "t0003"]


def test_a_failed_trial_is_neither_incumbent_nor_retrained():
    # lr 0.5 is a recorded value (of another seed) with no run of this seed: the replay
    # fails it; lr 0.01 then is the first incumbent
    other = _records().iloc[[0]].assign(**{S.SEED: SEED + 1, S.CONFIG: json.dumps({"lr": 0.5})})
    campaign, method = _run(order=[0.5, 0.01],
                            recorded=Recorded(pd.concat([_records(), other], ignore_index=True)))
    rows = _rows(campaign)
    assert rows["t0000"][S.STATUS] == S.FAILED and "no recorded" in rows["t0000"][S.ERROR]
    assert [r[S.RETRAIN_OF] for r in campaign.rows if r[S.KIND] == S.RETRAIN] == ["t0001"]
    assert method.heard_ == ["t0000", "t0001"]


# -- the cap: tuning compute (retrains aside), checked at every epoch report


def test_the_cap_stops_the_running_trial_at_its_first_report_past_it():
    # one worker, 1 resource: t0000 0..10 (10 s spent), retrain 10..15 (not charged),
    # t0001 15..19 (14 s), t0002 starts at 19 and reports at 21 and 23 (16 s, 18 s spent)
    # and at 25: 14 + 6 = 20 >= 20 stops it there; nothing more is suggested
    campaign, method = _run(cap_s=20.0)
    rows = _rows(campaign)
    assert list(rows) == ["t0000", "t0000-retrain", "t0001", "t0002"]
    assert [rows[t][S.STATUS] for t in ("t0000", "t0001", "t0002")] == \
        [S.OK, S.OK, S.OVER_BUDGET]
    assert (rows["t0002"][S.STARTED_S], rows["t0002"][S.ENDED_S]) == (19, 25)
    assert campaign.spent_s == 20.0
    assert "t0003" not in method.known_at_  # the cap was spent before it could be asked for
    assert rows["t0002"].get(S.VAL_NLL) is None  # a stopped trial has no result


def test_no_trial_starts_once_the_cap_is_spent():
    # t0000 (10 s) + t0001 (4 s) = 14 s >= 14: t0002 is never suggested
    campaign, method = _run(cap_s=14.0)
    assert [r[S.TRIAL_ID] for r in campaign.rows if r[S.KIND] == S.SEARCH] == \
        ["t0000", "t0001"]
    assert set(method.known_at_) == {"t0000", "t0001"}
    assert campaign.rows[-1][S.KIND] == S.SEARCH  # t0001 is no incumbent: no retrain after


def test_with_two_workers_the_cap_counts_the_running_trials_too():
    # 2 workers, cap 12: t0000 (0..10) and t0001 (0..4) run; at 4 s 4 + 4 = 8 < 12.
    # t0000 reports at 2, 4, 6 (spent 4 + 6 = 10) and 8: 4 + 8 = 12 >= 12 stops it there
    campaign, _ = _run(workers=2, cap_s=12.0)
    rows = _rows(campaign)
    assert rows["t0000"][S.STATUS] == S.OVER_BUDGET and rows["t0000"][S.ENDED_S] == 8
    assert rows["t0001"][S.STATUS] == S.OK
    assert campaign.spent_s == 12.0
    # the one OK trial is the incumbent; nothing else was suggested
    assert sorted(rows) == ["t0000", "t0001", "t0001-retrain"]


# -- resume: any prefix of the journal, replayed, finishes as the whole run did


def _journaled(tmp_path, workers: int, method: Method):
    clock = SimulatedClock()
    finished: list[Campaign] = []
    journal = Journal(tmp_path / S.JOURNAL_FILE, clock)
    queue = CampaignQueue([lambda: _campaign(method, workers, clock=clock)],
                          on_done=finished.append, log=journal)
    return queue, clock, finished, journal


def _table(campaigns: list[Campaign]) -> pd.DataFrame:
    return comparable(frame([r for c in campaigns for r in c.rows], S.TRIAL_COLUMNS))


@pytest.mark.parametrize("workers", [1, 2])
def test_resuming_from_any_prefix_of_the_journal_gives_the_whole_run(tmp_path, workers):
    configs = [{"lr": lr} for lr in ORDER]
    queue, clock, finished, journal = _journaled(tmp_path, workers, ListedMethod(configs))
    simulate(queue, RECORDED, workers, clock)
    journal.close()
    whole = _table(finished)
    events, _ = read_journal(tmp_path / S.JOURNAL_FILE)
    assert [e["trial"] for e in events if e["event"] == "tell"] == \
        ["t0000", "t0001", "t0002", "t0003"]
    for cut in range(1, len(events)):
        (tmp_path / str(cut)).mkdir()
        queue, clock, finished, journal = _journaled(tmp_path / str(cut), workers,
                                                     ListedMethod(configs))
        queue.resume(events[:cut])
        clock.now = events[cut - 1][AT]  # the suite's time goes on from the last event
        simulate(queue, RECORDED, workers, clock)
        journal.close()
        assert queue.finished, cut
        pd.testing.assert_frame_equal(_table(finished), whole, obj=f"cut at event {cut}")


def test_a_trial_cut_short_runs_again_under_its_own_name(tmp_path):
    queue, clock, finished, journal = _journaled(tmp_path, 1, ListedMethod([{"lr": 0.1}]))
    simulate(queue, RECORDED, 1, clock)
    journal.close()
    events, _ = read_journal(tmp_path / S.JOURNAL_FILE)
    cut = next(i for i, e in enumerate(events) if e["event"] == "complete")  # t0000 running
    (tmp_path / "again").mkdir()
    queue, clock, finished, _ = _journaled(tmp_path / "again", 1, ListedMethod([{"lr": 0.1}]))
    queue.resume(events[:cut])
    [(_, campaign)] = queue.active
    assert campaign.rerun == ["t0000"] and campaign.rows == []
    assert not campaign.reports  # reports of a trial that runs again are dropped


def test_resume_refuses_a_journal_the_method_does_not_repeat(tmp_path):
    queue, clock, _, journal = _journaled(tmp_path, 1, ListedMethod([{"lr": 0.1}]))
    simulate(queue, RECORDED, 1, clock)
    journal.close()
    events, _ = read_journal(tmp_path / S.JOURNAL_FILE)
    other, *_ = _journaled(tmp_path, 1, ListedMethod([{"lr": 0.01}]))
    with pytest.raises(BenchError, match=re.escape("cannot resume toy | listed | seed 0: "
                                                   "the journal has trial t0000 at")):
        other.resume(events)


# -- a failed trial keeps its traceback


def test_a_failed_trial_records_the_traceback_the_worker_caught():
    task = Task("digits", 60, "small-cnn", image_size=8)
    configs = [{"lr": lr, "alpha": 1e-3, "beta": 1e-3} for lr in (0.1, 0.01)]
    campaign = Campaign("test", task, "listed", ListedMethod(configs), SEED, Budget(), 0.0)
    spec = TrialSpec(task, SEED, campaign.worker_method, threads=1)
    request = campaign.next_request("w0")
    campaign.trial_started("w0")
    # the fault raises inside the trial's error handling, before any data is loaded
    threads = torch.get_num_threads()
    try:
        final = execute_trial(dataclasses.replace(request, fault="raise"), spec,
                              lambda report: False)
    finally:
        torch.set_num_threads(threads)  # the worker sets its own; this process goes on
    campaign.trial_complete("w0", final)
    row = campaign.rows[0]
    assert row[S.STATUS] == S.FAILED and row[S.ERROR] == "RuntimeError: injected fault"
    trace = row[S.ERROR_TRACE]
    assert trace.startswith("Traceback (most recent call last):")
    assert "inject_at_start" in trace and trace.rstrip().endswith("RuntimeError: injected fault")
    # a worker process that died sent no result: the record says so, with no traceback
    campaign.next_request("w1")
    campaign.trial_complete("w1", None, error=True)
    assert campaign.rows[1][S.ERROR] == "trial process failed"
    assert campaign.rows[1][S.ERROR_TRACE] is None
