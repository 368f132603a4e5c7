"""The faster replay (issue 25) gives what the plain code gave: the recorded-run model and the
budget in their own modules (no import circle in bench/driver), and the analysis' fast
paths equal to the straightforward computations they replace. Speed itself is measured by
``bench benchmark replay``, never asserted here."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.analysis import curves as C
from bench.contract import schema as S
from bench.driver.replay_suite import parse_replay_suite, run_replay
from bench.records.recorded import Recorded, RecordedTask, load_recorded
from bench.records.tables import comparable, read_reports, read_trials

ROOT = Path(__file__).resolve().parents[1]
SUITE = """name = "speed"
records = "published:cifar10-resnet50-v1"
seeds = [1001, 2001]
[budget]
cap_s = 1e12
[[tasks]]
name = "cifar10-resnet50-v1-N100"
cap_s = 60000
[methods.grid]
[methods.random]
trials = 12
[methods.tpe]
"""


def test_reading_a_replay_suite_loads_neither_the_simulator_nor_the_campaigns():
    # the suite's checks need the records (bench.records.recorded), not the backend
    code = ("import sys\n"
            "from bench.driver.suite import parse_suite\n"
            "from bench.records.recorded import RecordedTask\n"
            f"suite = parse_suite({SUITE!r})\n"
            "print(isinstance(suite.tasks[0], RecordedTask))\n"
            "print(sorted(m for m in ('bench.driver.replay', 'bench.driver.campaign') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split("\n")
    assert out[:2] == ["True", "[]"]


def test_published_records_are_read_once_and_a_run_directory_every_time(tmp_path):
    first = load_recorded("published:cifar10-resnet50-v1")
    assert load_recorded("published:cifar10-resnet50-v1") is first
    assert isinstance(first, Recorded)
    task = first.tasks()[0]
    assert isinstance(RecordedTask(task, first.space(task)).search_space()[0].grid, tuple)
    out = run_replay(parse_replay_suite(SUITE), tmp_path / "run", progress=False)
    again = load_recorded(str(out), "grid")
    assert again is not load_recorded(str(out), "grid")
    assert set(again.trials[S.METHOD]) == {"grid"}


@pytest.fixture(scope="module")
def replayed_dir(tmp_path_factory):
    return run_replay(parse_replay_suite(SUITE), tmp_path_factory.mktemp("r") / "run",
                      progress=False)


@pytest.fixture(scope="module")
def replayed(replayed_dir):
    return read_trials(replayed_dir)


def test_a_replay_gives_the_same_records_every_time(replayed_dir, tmp_path):
    stages: dict = {}
    two = run_replay(parse_replay_suite(SUITE), tmp_path / "two", progress=False,
                     stages=stages)
    assert stages["trials"] == len(read_trials(two)) > 0
    assert {"load_s", "simulate_s", "write_s"} <= set(stages)
    pd.testing.assert_frame_equal(comparable(read_trials(replayed_dir)),
                                  comparable(read_trials(two)))
    pd.testing.assert_frame_equal(read_reports(replayed_dir), read_reports(two))


def _plain_curves(trials: pd.DataFrame) -> pd.DataFrame:
    """The curves as the plain code computed them: one pandas group at a time."""
    rows: list[dict] = []
    score = S.VAL_NLL
    for key, group in trials.groupby([S.TASK, S.METHOD, S.SEED], sort=True):
        ordered = C._ordered(group).to_dict("records")
        C._search_curve(ordered, key, rows, score)
    return pd.DataFrame(rows, columns=C.CURVE_COLUMNS)


def test_the_curves_equal_the_plain_per_group_computation(replayed):
    shuffled = replayed.sample(frac=1.0, random_state=0)  # the order runs were read in
    for trials in (replayed, shuffled):
        pd.testing.assert_frame_equal(C.anytime_curves(trials), _plain_curves(trials),
                                      check_exact=True)


def test_the_mean_over_seeds_equals_each_computes_own_mean(replayed):
    curves = C.anytime_curves(replayed)
    agg = C.aggregate_curves(curves, band="none")
    for (task, method), g in curves.groupby([S.TASK, S.METHOD]):
        xs, vals = C._seed_matrix(g)
        plain = [v[~np.isnan(v)].mean() for v in vals.T]
        mine = agg[(agg[S.TASK] == task) & (agg[S.METHOD] == method)]["mean"].to_numpy()
        assert np.array_equal(mine, np.array(plain))


def test_compute_to_target_interval_equals_one_resample_at_a_time():
    rng = np.random.default_rng(3)
    for _ in range(200):
        seeds, points = int(rng.integers(1, 10)), int(rng.integers(1, 30))
        xs = np.sort(rng.random(points)) * 100
        vals = rng.random((seeds, points))
        for s in range(seeds):  # a seed has no point before its first
            vals[s, :rng.integers(0, points + 1)] = np.nan
        target = float(rng.random())
        rows = rng.integers(0, seeds, (50, seeds))
        each = C._reach_rows(xs, vals, rows, target, chunk_values=7 * vals.size)
        one = [np.nan_to_num(C._reach(xs, vals[r], target), nan=np.inf) for r in rows]
        assert np.array_equal(each, np.array(one))


@pytest.mark.parametrize("columns", [1, 2, 144, 3000])
def test_the_bootstrap_subsets_are_argsorts_first_k(columns):
    rng = np.random.default_rng(columns)
    for k in (1, columns // 2 or 1, columns):
        uniform = rng.random((40, columns))
        assert np.array_equal(C._first_k(uniform, k), np.argsort(uniform, axis=1)[:, :k])


def test_a_cached_grid_bootstrap_equals_a_drawn_one(replayed, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    drawn = C.grid_bootstrap(replayed, by_seed=True)
    files = sorted((tmp_path / "cache" / "bootstrap").glob("*.npy"))
    assert len(files) == replayed.groupby([S.TASK, S.SEED]).ngroups
    pd.testing.assert_frame_equal(C.grid_bootstrap(replayed, by_seed=True), drawn,
                                  check_exact=True)
    files[0].write_bytes(files[0].read_bytes()[:40])  # cut short: drawn again, rewritten
    other = replayed.assign(**{S.RESOURCE_S: replayed[S.RESOURCE_S] * 2})
    pd.testing.assert_frame_equal(C.grid_bootstrap(replayed, by_seed=True), drawn,
                                  check_exact=True)
    assert not C.grid_bootstrap(other, by_seed=True)[S.COMPUTE_S].equals(drawn[S.COMPUTE_S])
    assert len(list((tmp_path / "cache" / "bootstrap").glob("*.npy"))) == 2 * len(files)
