"""The training-convergence summary of a report, and the loop's per-epoch data term."""

import json

import pandas as pd
import pytest
import torch

from bench.analysis.convergence import convergence_markdown, loss_profile
from bench.contract import schema as S
from bench.training.train import Hook, TrainConfig, fine_tune
from bench.zoo.network import Network


def _tables():
    trials = pd.DataFrame([
        {S.TASK: "t", S.METHOD: "m", S.SEED: 0, S.TRIAL_ID: "a", S.KIND: S.LEARNED, S.STATUS: S.OK},
        {S.TASK: "t", S.METHOD: "m", S.SEED: 1, S.TRIAL_ID: "a", S.KIND: S.LEARNED, S.STATUS: S.OK},
        {S.TASK: "t", S.METHOD: "m", S.SEED: 0, S.TRIAL_ID: "s", S.KIND: S.SEARCH, S.STATUS: S.OK},
    ])
    rows = []
    for seed, scale in ((0, 1.0), (1, 3.0)):
        for step in range(1, 101):  # loss 1/step, times scale; seed 1 has no train_nll
            metrics = json.dumps({"train_nll": scale / step}) if seed == 0 else None
            rows.append({S.TASK: "t", S.METHOD: "m", S.SEED: seed, S.TRIAL_ID: "a", S.STEP: step,
                         S.TRAIN_LOSS: scale / step + (0 if seed == 0 else 0.0),
                         S.METRICS: metrics})
    rows.append({S.TASK: "t", S.METHOD: "m", S.SEED: 0, S.TRIAL_ID: "s", S.STEP: 1,
                 S.TRAIN_LOSS: 99.0, S.METRICS: None})  # a search trial: not counted
    return pd.DataFrame(rows), trials


def test_profile_by_hand():
    reports, trials = _tables()
    row = loss_profile(reports, trials).iloc[0]
    assert row["runs"] == 2
    # at 100%: mean of 1/s over s = 91..100, for scales 1 and 3 -> median = mean of the two
    window = sum(1 / s for s in range(91, 101)) / 10
    assert row["loss_100"] == pytest.approx(2 * window)
    q3 = sum(1 / s for s in range(66, 76)) / 10
    assert row["last_quarter_drop"] == pytest.approx((q3 - window) / q3)
    assert "| m | 2 |" in convergence_markdown(reports, trials)


def test_the_loop_reports_the_epoch_mean_data_term_apart_from_penalties():
    torch.manual_seed(0)
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    net = Network(torch.nn.Sequential(torch.nn.Linear(5, 3)), head="0", stage_of={})

    class BigPenalty(Hook):
        def penalty(self, loop):
            return torch.tensor(100.0)

    result = fine_tune(net, None, (x, y), TrainConfig(lr=0.01, steps=4, batch_size=20),
                       hooks=[BigPenalty()])
    assert [r.step for r in result.reports] == [2, 4]
    for r in result.reports:
        assert r.train_loss > 100 and r.fields["train_nll"] < 5
