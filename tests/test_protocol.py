"""The trial protocol's messages survive the trip through Ray Tune's dicts and the journal."""

import json

from bench.contract import schema as S
from bench.contract.protocol import (Decision, EpochReport, Event, FinalResult, TrialRequest,
                                     event, event_kind, parse_result)

RAY_FIELDS = {"pid": 4242, "timestamp": 1.5, "training_iteration": 3, "trial_id": "ab12",
              "time_this_iter_s": 0.25, "done": False}


def test_a_request_round_trips_through_a_tune_configuration():
    request = TrialRequest(3, "t0002-retrain", S.RETRAIN, {"lr": 0.1, "alpha": 1e-3},
                           retrain_of="t0002", fault="nan")
    config = json.loads(json.dumps(request.to_config()))  # Tune may copy it
    assert TrialRequest.from_config(config) == request
    assert TrialRequest.from_config({"campaign": 0, "trial": "t0000", "kind": S.SEARCH,
                                     "hp": {"lr": 0.1}}).fault is None


def test_an_epoch_report_keeps_the_methods_values_and_drops_rays_fields():
    report = EpochReport(40, {S.TRAIN_LOSS: 0.5, S.VAL_NLL: 0.7, S.EPOCH: 2, "sigma": 0.1},
                         steps_done=40, fit_s=3.5, node="host/abc")
    back = parse_result({**report.to_result(), **RAY_FIELDS})
    assert back == report
    # a replayed recorded curve carries no list of the method's keys: all but the envelope
    bare = parse_result({"phase": "epoch", S.STEP: 5, S.NODE: "replay", S.VAL_NLL: 1.0})
    assert bare == EpochReport(5, {S.VAL_NLL: 1.0}, node="replay")


def test_a_final_result_round_trips_and_a_failure_keeps_its_traceback():
    ok = FinalResult(S.OK, {S.VAL_NLL: 0.3, S.VAL_ACC: 0.9, S.OBJECTIVE: None}, steps_done=100,
                     train_s=9.0, eval_s=1.0, info='{"final_loss": 0.2}', node="n",
                     worker_wall_s=11.0)
    assert parse_result({**ok.to_result(), **RAY_FIELDS}) == ok
    failed = FinalResult(S.FAILED, error="RuntimeError: boom", trace="Traceback ...\nboom")
    back = parse_result(failed.to_result())
    assert back.status == S.FAILED and back.trace == failed.trace and back.scores == {}


def test_results_that_are_not_ours_parse_to_none():
    assert parse_result(None) is None and parse_result(RAY_FIELDS) is None


def test_decisions_are_ray_tunes_words():
    from ray.tune.schedulers import TrialScheduler

    assert Decision.CONTINUE.value == TrialScheduler.CONTINUE
    assert Decision.STOP.value == TrialScheduler.STOP


def test_journal_events_name_their_kind_and_campaign():
    line = json.loads(json.dumps(event(Event.SUGGEST, 2, trial="t0001", hp={"lr": 0.1})))
    assert line == {"event": "suggest", "campaign": 2, "trial": "t0001", "hp": {"lr": 0.1}}
    assert event_kind(line) is Event.SUGGEST
    assert event_kind({"event": "from-a-later-version"}) is None
