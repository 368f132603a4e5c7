"""A reused worker builds a task's pretrained network once and copies it for every later
trial (issue 25): the copy equals a fresh build, leaves the random state as building does,
and a trial on it gives exactly what a trial in a fresh worker gives."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.contract import schema as S
from bench.contract.method import Method
from bench.contract.protocol import TrialRequest
from bench.worker import trial as worker_trial
from bench.worker.trial import TrialSpec, execute_trial
from bench.zoo.task import Task

TASKS = {
    "small-cnn": Task("digits", 120, "small-cnn", image_size=8, steps=12, batch_size=16,
                      test_limit=100),
    "lite0-top2": Task("digits", 60, "efficientnet-lite0", image_size=32, steps=4,
                       batch_size=16, test_limit=60, trainable_blocks=2),
    "lite0-noise": Task("digits", 60, "efficientnet-lite0", image_size=32, steps=4,
                              batch_size=16, test_limit=60,
                              label_noise={"kind": "uniform", "rate": 0.4}),
}


def _state(net):
    return {k: v.clone() for k, v in net.model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_copied_network_equals_a_fresh_build_and_leaves_the_same_random_state(name):
    task = TASKS[name]
    data = task.load(0)
    first = data.network()  # built
    after_build = torch.get_rng_state()
    torch.manual_seed(1234)  # whatever ran between two trials
    torch.rand(7)
    copied = data.network()  # copied from the first build
    after_copy = torch.get_rng_state()
    fresh = task.load(0).network()  # another worker's first build
    assert data.built, "the first build was not kept"
    assert torch.equal(after_build, after_copy)
    for other in (copied, fresh):
        a, b = _state(first), _state(other)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # the copy is its own network: training it leaves the kept one alone
    with torch.no_grad():
        next(copied.model.parameters()).add_(1.0)
    again = data.network()
    assert torch.equal(next(again.model.parameters()), next(first.model.parameters()))
    assert copied.mu0.keys() == first.mu0.keys()
    assert all(torch.equal(copied.mu0[k], first.mu0[k]) for k in first.mu0)


def test_a_reused_worker_gives_a_trial_what_a_fresh_one_gives():
    task = dataclasses.replace(TASKS["small-cnn"], steps=30)
    spec = TrialSpec(task, 0, Method(), threads=1)
    request = TrialRequest(0, "t0000", S.SEARCH, {"lr": 0.05, "alpha": 1e-3, "beta": 1e-3})
    worker_trial.task_data.cache_clear()  # a fresh worker: the network is built
    fresh = execute_trial(request, spec, lambda report: False)
    other = execute_trial(dataclasses.replace(request, trial="t0001",
                                              hp={"lr": 0.02, "alpha": 1e-4, "beta": 1e-4}),
                          spec, lambda report: False)
    reused = execute_trial(request, spec, lambda report: False)  # copied
    assert fresh.status == reused.status == S.OK
    assert worker_trial.task_data(task, 0, "cpu").built  # the worker kept its build
    assert reused.scores == fresh.scores and other.scores != fresh.scores
    assert reused.steps_done == fresh.steps_done
