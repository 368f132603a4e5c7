"""A one-worker replay simulates each campaign alone, in parallel processes (issue 25): the
records are the same for any number of processes, and equal to the campaigns simulated
together on one shared clock (as several workers still are), timing aside to rounding."""

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.contract import schema as S
from bench.driver.campaign import CampaignQueue
from bench.driver.replay import SimulatedClock, simulate
from bench.driver.replay_parallel import simulate_campaign
from bench.driver.replay_suite import parse_replay_suite, run_replay
from bench.driver.run_output import RunView
from bench.records.recorded import load_recorded
from bench.records.tables import comparable, frame, read_reports, read_trials

SUITE = """name = "parallel"
records = "published:cifar10-resnet50-v1"
seeds = [1001, 2001]
[budget]
workers = 1
cap_s = 1e12
[[tasks]]
name = "cifar10-resnet50-v1-N100"
cap_s = 40000
[[tasks]]
name = "cifar10-resnet50-v1-N1000"
cap_s = 40000
[methods.grid]
[methods.random]
trials = 8
[methods.tpe]
trials = 8
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    suite = parse_replay_suite(SUITE)
    root = tmp_path_factory.mktemp("parallel")
    return suite, {jobs: run_replay(suite, root / f"jobs{jobs}", progress=False, jobs=jobs)
                   for jobs in (1, 3)}


def test_the_records_do_not_depend_on_the_number_of_processes(runs):
    _, dirs = runs
    one, three = read_trials(dirs[1]), read_trials(dirs[3])
    assert len(one) > 50 and set(one[S.METHOD]) == {"grid", "random", "tpe"}
    pd.testing.assert_frame_equal(one, three)  # timing columns too
    pd.testing.assert_frame_equal(read_reports(dirs[1]), read_reports(dirs[3]))


def test_campaigns_alone_equal_campaigns_on_one_shared_clock(runs, tmp_path):
    """The serial simulation of every campaign on one clock (the code several workers
    use): the same trials and results, and times equal to float rounding."""
    suite, dirs = runs
    clock = SimulatedClock()
    view = RunView(suite, tmp_path, progress=False, every_s=float("inf"))
    simulate(CampaignQueue(view.builders(suite, clock=clock, discrete=True)),
             load_recorded(suite.records.name), 1, clock)
    # as run_replay tables published records: one A100 a trial, CPU time unknown
    together = frame([{**r, S.CPU_S: None, S.GPU_S: r[S.WALL_S]}
                      for c in view.campaigns for r in c.rows], S.TRIAL_COLUMNS)
    alone = read_trials(dirs[3])
    pd.testing.assert_frame_equal(comparable(alone), comparable(together),
                                  check_dtype=False)
    for column in (S.STARTED_S, S.ENDED_S, S.WALL_S, S.RESOURCE_S):
        np.testing.assert_allclose(alone[column], together[column], rtol=1e-12, atol=1e-6)
    assert abs(clock.now - max(alone[S.ENDED_S])) <= 1e-6 * clock.now


def test_each_campaign_starts_where_the_one_before_it_ended(runs):
    suite, dirs = runs
    trials = read_trials(dirs[3])
    order = [(t.name, seed, spec.label) for t in suite.tasks for seed in suite.seeds
             for spec in suite.methods]
    spans = [trials[(trials[S.TASK] == task) & (trials[S.SEED] == seed)
                    & (trials[S.METHOD] == label)] for task, seed, label in order]
    for before, after in zip(spans, spans[1:]):
        assert after[S.STARTED_S].min() == pytest.approx(before[S.ENDED_S].max(), rel=1e-12)


def test_a_method_that_raises_in_a_replay_process_raises_in_the_driver(tmp_path,
                                                                      monkeypatch):
    """The child's exception cannot travel whole; the driver simulates that campaign
    again and raises the method's own error, as a serial replay would."""
    from baselines._random import RandomSearch

    def broken(self, trial_id):
        raise ZeroDivisionError("the plugin's own bug")

    monkeypatch.setattr(RandomSearch, "suggest", broken)  # inherited by forked processes
    suite = parse_replay_suite(SUITE)
    with pytest.raises(Exception, match="the plugin's own bug"):
        run_replay(suite, tmp_path / "out", progress=False, jobs=2)
    alone = pytest.raises(Exception, match="the plugin's own bug")
    with alone:
        simulate_campaign(suite, load_recorded(suite.records.name), 1)


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bench_replay_refuses_a_bad_jobs_count_in_one_line(tmp_path, capsys, value):
    (tmp_path / "s.toml").write_text(SUITE)
    assert main(["replay", str(tmp_path / "s.toml"), "--jobs", value, "--out",
                 str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--jobs: must be a whole number >= 1" in err


def test_fork_map_keeps_the_order_and_runs_in_other_processes_when_it_may():
    """In a fresh single-threaded process the work runs in forked children; with another
    thread running it stays in the process (forking could deadlock the child)."""
    import subprocess
    import sys

    code = """
import os, threading, time
from bench.driver.forked import fork_map
parent = os.getpid()
def work(item):
    time.sleep(0.05)
    return item * item, os.getpid() != parent
print(list(fork_map(work, list(range(6)), 2)))
threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
print(list(fork_map(work, list(range(3)), 2)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == str([(i * i, True) for i in range(6)])
    assert out[1] == str([(i * i, False) for i in range(3)])


def test_bench_replay_in_a_fresh_process_draws_and_reports_in_forked_ones(tmp_path):
    """The command as users run it (single-threaded: campaigns, the figure and the report
    in forked processes) ends with its report, figure and records."""
    import subprocess
    import sys

    (tmp_path / "s.toml").write_text(SUITE)
    done = subprocess.run([sys.executable, "-m", "bench", "replay", str(tmp_path / "s.toml"),
                           "--out", str(tmp_path / "out"), "--quiet", "--jobs", "2"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "## cifar10-resnet50-v1-N1000" in done.stdout
    for name in ("report.md", "tradeoff.png", "tradeoff.svg", S.TRIALS_FILE, S.REPORTS_FILE):
        assert (tmp_path / "out" / name).is_file(), name


def test_meanwhile_is_called_once_in_the_driver_and_changes_nothing(runs, tmp_path):
    """``bench replay`` imports what its report needs while the campaigns simulate
    (``run_replay``'s ``meanwhile``): called once, in this process, records unchanged."""
    import os

    suite, dirs = runs
    calls = []
    out = run_replay(suite, tmp_path / "out", progress=False, jobs=2,
                     meanwhile=lambda: calls.append(os.getpid()))
    assert calls == [os.getpid()]
    pd.testing.assert_frame_equal(read_trials(out), read_trials(dirs[1]))
