"""The actor pool (issue 25): a worker runs a trial one message at a time
(``TrialStepper``), gives what a trial run in one call gives, and can stop a trial at any
report and run the next; the pool's records equal Ray Tune's for the same suite."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from bench.contract import schema as S
from bench.contract.method import Method
from bench.contract.protocol import EpochReport, FinalResult, TrialRequest
from bench.records.tables import comparable
from bench.worker.stepper import TrialStepper
from bench.worker.trial import TrialSpec, execute_trial
from bench.zoo.task import Task

TASK = Task("digits", 120, "small-cnn", image_size=8, steps=24, batch_size=16, test_limit=100)
SPEC = TrialSpec(TASK, 0, Method(), threads=1)
REQUEST = TrialRequest(0, "t0000", S.SEARCH, {"lr": 0.05, "alpha": 1e-3, "beta": 1e-3})


def _drive(stepper: TrialStepper, request: TrialRequest, stop_at: int | None = None,
           wait: bool = True):
    """Step a trial through; stop it at report ``stop_at`` (1-based). Its messages."""
    messages = [stepper.start(request, SPEC, wait)]
    while isinstance(messages[-1], EpochReport):
        messages.append(stepper.step(len(messages) == stop_at))
    return messages


def test_a_stepped_trial_gives_what_one_call_gives():
    reports = []
    whole = execute_trial(REQUEST, SPEC, lambda r: reports.append(r) or False)
    stepper = TrialStepper(node="here")
    messages = _drive(stepper, REQUEST)
    assert len(reports) >= 3 and len(messages) == len(reports) + 1
    assert [(m.step, m.values) for m in messages[:-1]] == [(r.step, r.values) for r in reports]
    assert all(m.node == "here" for m in messages)
    final = messages[-1]
    assert isinstance(final, FinalResult) and final.status == S.OK
    assert final.scores == whole.scores and final.steps_done == whole.steps_done
    assert not stepper.busy


def test_a_trial_stopped_at_a_report_ends_there_and_the_worker_goes_on():
    stepper = TrialStepper()
    whole = _drive(stepper, REQUEST)
    stopped = _drive(stepper, dataclasses.replace(REQUEST, trial="t0001"), stop_at=2)
    assert len(stopped) == 3 and stopped[-1] is None  # two reports, then nothing
    assert stopped[1].step == whole[1].step and not stepper.busy
    again = _drive(stepper, REQUEST)  # the same trial on the reused worker
    assert again[-1].scores == whole[-1].scores


def test_a_trial_that_does_not_wait_gives_the_same_and_stops_at_its_next_report():
    """A trial its method cannot prune trains on while the driver reads its reports; a
    stop (the cap) reaches it at its next report, whose message may already be on its way."""
    stepper = TrialStepper()
    waited = _drive(stepper, REQUEST)
    free = _drive(stepper, REQUEST, wait=False)
    assert [(m.step, m.values) for m in free[:-1]] == [(m.step, m.values) for m in waited[:-1]]
    assert free[-1].scores == waited[-1].scores
    stopped = _drive(stepper, REQUEST, stop_at=2, wait=False)
    assert stopped[-1] is None and 3 <= len(stopped) <= 4 and not stepper.busy
    assert [m.step for m in stopped[:-1]] == [m.step for m in waited[:len(stopped) - 1]]
    assert _drive(stepper, REQUEST)[-1].scores == waited[-1].scores


def test_a_failing_trial_is_a_result_and_a_busy_worker_refuses_a_second():
    stepper = TrialStepper()
    failed = stepper.start(dataclasses.replace(REQUEST, fault="raise"), SPEC)
    assert isinstance(failed, FinalResult) and failed.status == S.FAILED
    assert "injected fault" in failed.error and not stepper.busy
    first = stepper.start(REQUEST, SPEC)
    assert isinstance(first, EpochReport) and stepper.busy
    with pytest.raises(RuntimeError, match="still running"):
        stepper.start(REQUEST, SPEC)
    assert stepper.step(True) is None and not stepper.busy
    with pytest.raises(RuntimeError, match="no trial"):
        stepper.step(False)


@pytest.mark.ray
def test_the_pool_and_ray_tune_write_equal_records(smoke_run, tmp_path):
    """The smoke suite (grid, random, TPE with pruning, every learned method) on Ray Tune
    gives the records the actor pool gave: same trials, scores, stops and reports (so a
    second run of a suite gives the same records, whichever backend)."""
    import json

    from bench.cli import main

    suite = smoke_run / S.SUITE_FILE
    out = tmp_path / "tune"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--backend", "tune"]) == 0
    assert json.loads((smoke_run / S.METADATA_FILE).read_text())["backend"] == "actors"
    assert json.loads((out / S.METADATA_FILE).read_text())["backend"] == "tune"
    pool, tune = (comparable(pd.read_parquet(d / S.TRIALS_FILE)) for d in (smoke_run, out))
    pd.testing.assert_frame_equal(pool, tune)
    assert len(pool) >= 30 and (pool[S.STATUS] != S.OVER_BUDGET).all()  # no cap binds
    assert (pool[S.STATUS] == S.PRUNED).any()  # two workers, and tpe-prune prunes
    keys = [S.TASK, S.METHOD, S.SEED, S.TRIAL_ID, S.STEP]
    pool, tune = (pd.read_parquet(d / S.REPORTS_FILE).sort_values(keys, ignore_index=True)
                  for d in (smoke_run, out))
    pd.testing.assert_frame_equal(pool, tune)
    assert len(pool) >= 30


@pytest.mark.ray
def test_a_method_hook_that_raises_on_the_pool_stops_the_run_and_names_it(
        tmp_path, break_on_result, capsys):
    """A bug in a method's own hook (run by the driver as trials finish) stops a live run
    with exit 1, the method, the hook and the traceback; the pool's actors go with it."""
    import baselines
    from bench.cli import main

    break_on_result(baselines.GridSearch)
    suite = tmp_path / "hook.toml"
    suite.write_text('name = "hook"\nseeds = [0]\n[budget]\ncap_s = 100\n[[tasks]]\n'
                     'dataset = "digits"\nn = 60\nbackbone = "small-cnn"\nimage_size = 8\n'
                     'steps = 4\nbatch_size = 16\ntest_limit = 60\n[methods.grid]\n'
                     'max_trials = 2\n')
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bench: method 'grid' raised in on_result(): KeyError: 'val_loss'\n")
    assert "Traceback" in err
