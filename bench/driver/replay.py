"""Replay: search methods run against runs already recorded, in simulated time.

A trial "takes" its recorded runtime; the worker pool, the cap (checked at simulated epoch
reports, as live) and the campaign order are those of a live run, driven by the same
``Campaign`` and ``CampaignQueue`` code. Only the backend differs: a discrete-event
simulation instead of Ray. Methods see a discrete space (each hyperparameter's recorded
values), so every suggestion has a recorded run. Records come from the published DE-ELBo
study (``published:<name>``) or from a harness run directory whose grid retrained every
configuration (``retrain_all = true``). A harness run's recorded per-epoch reports
(``bench.records.learning_curves``) are replayed at their steps, validation metrics included
where recorded, so pruning methods act on them; a pruning method (``reports_validation``)
is refused on records without them for every configuration (published records have none).
The recorded runs themselves: ``bench.records.recorded``; the replay suites that drive it:
``bench.driver.replay_suite``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import weakref

from bench.contract import schema as S
from bench.contract.protocol import SCORES, Decision, EpochReport, FinalResult, TrialRequest
from bench.driver.campaign import CampaignQueue
from bench.records.learning_curves import report_times
from bench.records.recorded import Recorded

REPORTS_PER_TRIAL = 10  # simulated epoch reports of a run whose epoch time is unknown
NODE = "replay"  # where a replayed trial ran


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _epoch_s(run: dict) -> float:
    info = json.loads(run.get(S.INFO) or "{}") if isinstance(run.get(S.INFO), str) else {}
    epoch = info.get("epoch_s")
    return epoch if epoch and epoch > 0 else run[S.WALL_S] / REPORTS_PER_TRIAL


def simulate(queue: CampaignQueue, recorded: Recorded, workers: int,
             clock: SimulatedClock) -> None:
    """Run the queue's campaigns against the records: a discrete-event simulation."""
    events: list[tuple[float, int, str, EpochReport | FinalResult]] = []
    order = itertools.count()
    live: set[str] = set()
    ids = itertools.count()
    while True:
        request = None
        while len(live) < workers:
            trial_id = f"r{next(ids):06d}"
            request = queue.suggest(trial_id)
            if not isinstance(request, TrialRequest):
                break
            _, campaign = queue.owner[trial_id]
            queue.started(trial_id)
            live.add(trial_id)
            for at, message in _recorded_run(recorded, campaign, request):
                heapq.heappush(events, (clock.now + at, next(order), trial_id, message))
        if not live:
            if request is None and queue.active:
                raise RuntimeError("replay stalled: campaigns wait with nothing running")
            return
        at, _, trial_id, message = heapq.heappop(events)
        if trial_id not in live:
            continue  # stopped at an earlier report
        clock.now = at
        if isinstance(message, EpochReport) and \
                queue.report(trial_id, message) != Decision.STOP:
            continue
        live.remove(trial_id)
        queue.complete(trial_id, message if isinstance(message, FinalResult) else None)


# per recorded-run model, the messages of each run already looked up (by the run's id: the
# model holds the run for as long as it lives)
_MADE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _recorded_run(recorded: Recorded, campaign, request: TrialRequest):
    """The messages a trial's recorded run sends, with their seconds into the run: its
    epoch reports, then its final result (a failure if nothing was recorded for it). Made
    once per run (frozen: shared by the trials of every method that asks for it)."""
    run = recorded.lookup(campaign.task.name, campaign.seed, request.kind, request.hp)
    if run is None:
        return [(0.0, FinalResult(S.FAILED, node=NODE, error=f"no recorded {request.kind} "
                                                             f"run for {request.hp}"))]
    made = _MADE.setdefault(recorded, {})
    if id(run) not in made:
        made[id(run)] = _messages(recorded, run)
    return made[id(run)]


def _messages(recorded: Recorded, run: dict) -> list:
    wall, curve = float(run[S.WALL_S]), recorded.curves.of(run)
    if curve:  # the recorded reports, metrics and all, at their steps
        messages = [(at, EpochReport(report[S.STEP],
                                     {k: v for k, v in report.items() if k != S.STEP},
                                     node=NODE))
                    for at, report in zip(report_times(run, curve), curve)]
    else:
        epoch = _epoch_s(run)
        messages = [(k * epoch, EpochReport(k, node=NODE))
                    for k in range(1, math.ceil(wall / epoch))]
    final = FinalResult(S.OK, {key: run.get(key) for key in SCORES},
                        steps_done=run.get(S.STEPS_DONE), train_s=run.get(S.TRAIN_S),
                        eval_s=run.get(S.EVAL_S), node=NODE)
    return messages + [(wall, final)]
