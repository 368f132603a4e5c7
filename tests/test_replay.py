"""Replay: search methods against recorded runs in simulated time, and the published grid."""

import json

import pandas as pd
import pytest

from bench.analysis.curves import anytime_curves, grid_bootstrap
from bench.cli import main
from bench.contract import schema as S
from bench.driver.replay_suite import parse_replay_suite, run_replay
from bench.records.published import published_bo, published_runs

SUITE = """
name = "replay-test"
records = "published:cifar10-resnet50-v1"
seeds = [1001, 2001, 3001]
[budget]
workers = {workers}
cpus_per_worker = 1
cap_s = {cap}
[[tasks]]
name = "cifar10-resnet50-v1-N100"
[methods.grid]
retrain_all = true
"""
PUBLISHED = {1001: 0.6902, 2001: 0.6669, 3001: 0.6877}  # the study's full-grid test accuracy


def _replay(tmp_path, workers=1, cap=1e12, extra=""):
    suite = parse_replay_suite(SUITE.format(workers=workers, cap=cap) + extra)
    return pd.read_parquet(run_replay(suite, tmp_path / "out", progress=False) / S.TRIALS_FILE)


@pytest.mark.ray
def test_replayed_grid_reproduces_the_published_incumbents_and_compute(tmp_path):
    trials = _replay(tmp_path)
    recorded = published_runs("cifar10-resnet50-v1")
    recorded = recorded[recorded[S.TASK] == "cifar10-resnet50-v1-N100"]
    last = anytime_curves(trials).groupby(S.SEED).tail(1).set_index(S.SEED)
    for seed, acc in PUBLISHED.items():
        assert round(last.loc[seed, S.TEST_ACC], 4) == acc
        mine = recorded[recorded[S.SEED] == seed]
        winner = trials.loc[(trials[S.SEED] == seed) & (trials[S.TRIAL_ID] ==
                                                         last.loc[seed, S.TRIAL_ID]), S.CONFIG]
        retrain = mine[(mine[S.KIND] == S.RETRAIN) & (mine[S.CONFIG] == winner.item())]
        expected = mine.loc[mine[S.KIND] == S.SEARCH, S.RESOURCE_S].sum() + retrain[S.RESOURCE_S].item()
        assert last.loc[seed, S.COMPUTE_S] == pytest.approx(expected, rel=1e-9)
        assert last.loc[seed, S.K] == 24


@pytest.mark.ray
def test_bootstrap_last_point_equals_the_full_grid(tmp_path):
    trials = _replay(tmp_path)
    boot = grid_bootstrap(trials, draws=50, by_seed=True).groupby(S.SEED).tail(1).set_index(S.SEED)
    last = anytime_curves(trials).groupby(S.SEED).tail(1).set_index(S.SEED)
    assert boot["complete"].all()
    for seed in PUBLISHED:
        assert boot.loc[seed, "mean"] == pytest.approx(last.loc[seed, S.TEST_ACC])
        assert boot.loc[seed, S.COMPUTE_S] == pytest.approx(last.loc[seed, S.COMPUTE_S])


@pytest.mark.ray
@pytest.mark.parametrize("workers", [1, 3])
def test_a_replay_respects_the_cap_and_the_pool(tmp_path, workers):
    cap = 10_000.0  # about 6 of the 24 tuning runs (~1,500 s each)
    trials = _replay(tmp_path, workers=workers, cap=cap)
    for _, group in trials.groupby(S.SEED):
        tuning = group[group[S.KIND] == S.SEARCH]
        assert 3 <= len(tuning) < 24
        assert tuning[S.RESOURCE_S].sum() <= cap + workers * tuning[S.RESOURCE_S].max()
        assert (tuning[S.STATUS] == S.OVER_BUDGET).any()
        # never more than `workers` runs at once in simulated time
        spans = group[[S.STARTED_S, S.ENDED_S]].to_numpy()
        for start, _ in spans:
            running = ((spans[:, 0] <= start) & (spans[:, 1] > start)).sum()
            assert running <= workers


@pytest.mark.ray
def test_random_and_tpe_replay_only_recorded_configurations(tmp_path):
    extra = "[methods.random]\ntrials = 10\n[methods.tpe]\ntrials = 10\nstartup_trials = 4\n"
    trials = _replay(tmp_path, extra=extra)
    for method in ("random", "tpe"):
        mine = trials[trials[S.METHOD] == method]
        # a repeated suggestion (TPE) is answered from the earlier run, at no compute
        assert mine[S.STATUS].isin([S.OK, S.REPEAT]).all()
        assert len(mine[mine[S.KIND] == S.SEARCH]) == 30
        assert (mine.loc[mine[S.STATUS] == S.REPEAT, S.RESOURCE_S] == 0).all()
        lrs = {json.loads(c)["lr"] for c in mine[S.CONFIG]}
        assert lrs <= {0.1, 0.01, 0.001, 0.0001}


def test_published_bo_traces_become_a_method_with_curves():
    bo = published_bo("cifar10-convnext")
    curves = anytime_curves(bo[bo[S.TASK] == "cifar10-convnext-N100"])
    assert len(curves) > 0 and curves[S.TEST_ACC].between(0, 1).all()
    # the trace's own incumbent rule agrees with ours: every point has a retrain row
    assert curves.groupby(S.SEED)[S.K].max().min() >= 30


@pytest.mark.parametrize("suite, message", [
    (SUITE.format(workers=1, cap=1) + "[methods.de-elbo]\n", "only search methods can be replayed"),
    (SUITE.format(workers=1, cap=1).replace("cifar10-resnet50-v1-N100", "nope"), "unknown recorded task 'nope'"),
    (SUITE.format(workers=1, cap=1).replace("3001]", "4001]"), "seed 4001 is not in the records"),
    (SUITE.format(workers=1, cap=1).replace("published:cifar10-resnet50-v1", "published:mnist"),
     "unknown published records 'mnist'"),
])
def test_bad_replay_suites_exit_2(tmp_path, capsys, suite, message):
    path = tmp_path / "bad.toml"
    path.write_text(suite)
    assert main(["replay", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
