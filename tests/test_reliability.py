"""Reliability through real suite runs on Ray: injected faults are recorded and survived,
a driver killed with SIGKILL resumes to the records an uninterrupted run writes, the same
seeds give the same records, and readers never see a partial file."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.analysis.curves import anytime_curves
from bench.cli import main
from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.method import Context, Result
from bench.driver.suite import Budget
from bench.records.journal import Journal, read_journal
from bench.records.tables import comparable, read_table, write_table
from bench.worker.faults import parse_faults
from bench.zoo.task import Task
from baselines import PrunedTPESearch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.toml"

TASK = """
[[tasks]]
dataset = "mnist-5k"
n = 100
backbone = "small-cnn"
image_size = 16
regularizer = "l2sp"
steps = 30
batch_size = 32
test_limit = 300
"""

FAULT_SUITE = """name = "faults"
seeds = [0]
[budget]
workers = 2
cpus_per_worker = 1
cap_s = 200
""" + TASK + """
[methods.grid]
max_trials = 6

[methods.random]
trials = 3

[methods.ntk-marglik]
lrs = [0.1, 0.03]
"""

# campaigns in suite order; random's t0000 is its first trial, so its retrain exists
CAMPAIGNS = {0: "grid", 1: "random", 2: "ntk-marglik"}
FAULTS = {"0:t0000": "raise", "0:t0001": "nan", "0:t0002": "oom", "0:t0003": "die",
          "1:t0000-retrain": "die", "2:t0000": "die", "2:t0001": "nan"}
REASONS = {"raise": "RuntimeError: injected fault",
           "nan": "TrainingDiverged: training loss is nan",
           "oom": "MemoryError: injected: out of memory",
           "die": "ActorDiedError"}


@pytest.mark.ray
def test_injected_faults_are_recorded_as_failed_and_the_suite_finishes(tmp_path, monkeypatch):
    suite = tmp_path / "faults.toml"
    suite.write_text(FAULT_SUITE)
    monkeypatch.setenv("BENCH_FAULTS", ",".join(f"{k}={v}" for k, v in FAULTS.items()))
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0

    trials = pd.read_parquet(out / S.TRIALS_FILE)
    injected = set()
    for key, fault in FAULTS.items():
        campaign, trial = key.split(":")
        method = CAMPAIGNS[int(campaign)]
        injected.add((method, trial))
        row = trials[(trials[S.METHOD] == method) & (trials[S.TRIAL_ID] == trial)]
        assert len(row) == 1, key
        assert row[S.STATUS].item() == S.FAILED, key
        assert REASONS[fault] in row[S.ERROR].item(), (key, row[S.ERROR].item())
    # everything not injected ran normally: the suite went on after every fault
    rest = trials[[(m, t) not in injected for m, t in zip(trials[S.METHOD], trials[S.TRIAL_ID])]]
    assert set(rest[S.STATUS]) == {S.OK} and len(rest) >= 2, rest[[S.TRIAL_ID, S.STATUS]]
    grid = trials[trials[S.METHOD] == "grid"]
    assert {f"t{i:04d}" for i in range(6)} <= set(grid[S.TRIAL_ID])
    meta = json.loads((out / S.METADATA_FILE).read_text())
    assert "ended" in meta and meta["injected_faults"] == os.environ["BENCH_FAULTS"]
    assert (out / S.PLOT_STEM).with_suffix(".png").is_file()
    # curves: a failed trial is compute spent that found nothing
    first = anytime_curves(grid).iloc[0]
    incumbent = grid[grid[S.TRIAL_ID] == first[S.TRIAL_ID]].iloc[0]
    search = grid[grid[S.KIND] == S.SEARCH]
    before = search[search[S.ENDED_S] <= incumbent[S.ENDED_S]]
    retrain = grid[grid[S.RETRAIN_OF] == incumbent[S.TRIAL_ID]].iloc[0]
    assert (before[S.STATUS] == S.FAILED).sum() >= 1
    assert first[S.COMPUTE_S] == pytest.approx(before[S.RESOURCE_S].sum() + retrain[S.RESOURCE_S])
    ntk = trials[trials[S.METHOD] == "ntk-marglik"]
    assert (ntk[S.STATUS] == S.FAILED).all() and anytime_curves(ntk)[S.TEST_ACC].isna().all()


def test_a_bad_fault_spec_is_refused():
    for text in ("0:t0001=explode", "t0001=raise", "0:x=raise"):
        with pytest.raises(BenchError, match="BENCH_FAULTS"):
            parse_faults(text)
    assert parse_faults(" 0:t0001=raise, 2:t0000-retrain=die ") == {
        (0, "t0001"): "raise", (2, "t0000-retrain"): "die"}


# two workers: a kill leaves parallel trials cut short, and the pruning method's
# records still do not depend on which of two running trials reports first
RESUME_SUITE = """name = "resume"
seeds = [0]
[budget]
workers = 2
cpus_per_worker = 1
cap_s = 300
""" + TASK + """
[methods.grid]
max_trials = 3

[methods.tpe-prune]
trials = 5
startup_trials = 2

[methods.ntk-marglik]
lrs = [0.1]
"""


def _bench(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def _completions(out: Path) -> int:
    journal = out / S.JOURNAL_FILE
    if not journal.is_file():
        return 0
    return sum(e["event"] == "complete" for e in read_journal(journal)[0])


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """The resume suite run without interruption."""
    root = tmp_path_factory.mktemp("resume")
    (root / "resume.toml").write_text(RESUME_SUITE)
    assert main(["run", str(root / "resume.toml"), "--out", str(root / "whole"), "--quiet"]) == 0
    return root / "whole"


def _stop_after(suite: Path, out: Path, completions: int, sig: int) -> subprocess.Popen:
    proc = _bench("run", str(suite), "--out", str(out), "--quiet")
    deadline = time.monotonic() + 240
    while _completions(out) < completions and proc.poll() is None:
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait()
    return proc


@pytest.mark.ray
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_records(whole, tmp_path):
    suite = tmp_path / "resume.toml"
    suite.write_text(RESUME_SUITE)
    killed = tmp_path / "killed"
    total = len(pd.read_parquet(whole / S.TRIALS_FILE))

    kill_after = random.Random().randint(1, total - 2)  # a random point, printed on failure
    proc = _stop_after(suite, killed, kill_after, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    before, _ = read_journal(killed / S.JOURNAL_FILE)
    done_at_kill = sum(e["event"] == "complete" for e in before)
    assert kill_after <= done_at_kill < total
    meta = json.loads((killed / S.METADATA_FILE).read_text())
    assert "ended" not in meta

    # a fresh run may not write into it; the resume goes on
    assert main(["run", str(suite), "--out", str(killed), "--quiet"]) == 2
    assert main(["run", str(suite), "--resume", str(killed), "--quiet"]) == 0

    a = comparable(pd.read_parquet(whole / S.TRIALS_FILE))
    b = comparable(pd.read_parquet(killed / S.TRIALS_FILE))
    pd.testing.assert_frame_equal(a, b)  # nothing lost, nothing twice, same results
    journal, _ = read_journal(killed / S.JOURNAL_FILE)
    completes = [(e["campaign"], e["trial"]) for e in journal if e["event"] == "complete"]
    assert len(completes) == len(set(completes)) == total, f"killed after {done_at_kill}"
    # the compute spent before the kill is counted as recorded, and suite time goes on
    records = pd.read_parquet(killed / S.TRIALS_FILE).set_index([S.METHOD, S.TRIAL_ID])
    kept = {(e["row"][S.METHOD], e["trial"]): e["row"] for e in before
            if e["event"] == "complete"}
    for key, row in kept.items():
        assert records.loc[key, S.RESOURCE_S] == row[S.RESOURCE_S]
    later = records[[k not in kept for k in records.index]]
    assert (later[S.STARTED_S] >= before[-1]["at"] - 1e-6).all()
    meta = json.loads((killed / S.METADATA_FILE).read_text())
    assert "ended" in meta and len(meta["resumed"]) == 1
    reports_a = pd.read_parquet(whole / S.REPORTS_FILE)
    reports_b = pd.read_parquet(killed / S.REPORTS_FILE)
    key = [S.METHOD, S.TRIAL_ID, S.STEP]
    drop = [c for c in (S.TRAIN_S, S.EVAL_S) if c in reports_a]  # timings, if recorded
    pd.testing.assert_frame_equal(
        reports_a.drop(columns=drop).sort_values(key).reset_index(drop=True),
        reports_b.drop(columns=drop).sort_values(key).reset_index(drop=True))


@pytest.mark.ray
def test_ctrl_c_leaves_a_run_to_resume(whole, tmp_path):
    suite = tmp_path / "resume.toml"
    suite.write_text(RESUME_SUITE)
    out = tmp_path / "interrupted"
    proc = _stop_after(suite, out, 2, signal.SIGINT)
    said = proc.stdout.read()
    assert proc.returncode == 130, said
    assert f"interrupted; go on with: bench run {suite} --resume {out}" in said
    journal, _ = read_journal(out / S.JOURNAL_FILE)
    # trials stopped by Ctrl-C are not recorded as finished: they run again on resume
    assert all(e["row"][S.STATUS] != S.FAILED for e in journal if e["event"] == "complete")
    assert "ended" not in json.loads((out / S.METADATA_FILE).read_text())
    assert main(["run", str(suite), "--resume", str(out), "--quiet"]) == 0
    pd.testing.assert_frame_equal(comparable(pd.read_parquet(whole / S.TRIALS_FILE)),
                                  comparable(pd.read_parquet(out / S.TRIALS_FILE)))


def test_resume_refuses_what_it_cannot_go_on_with(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text(RESUME_SUITE)
    assert main(["run", str(suite), "--resume", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "no journal.jsonl" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / S.JOURNAL_FILE).write_text('{"event": "start", "campaign": 0, "at": 0.1}\n')
    (run / S.SUITE_FILE).write_text(RESUME_SUITE.replace("max_trials = 3", "max_trials = 4"))
    assert main(["run", str(suite), "--resume", str(run), "--quiet"]) == 2
    assert "ran a different suite" in capsys.readouterr().err
    assert main(["run", str(suite), "--resume", str(run), "--out", str(run)]) == 2


def test_a_torn_journal_line_is_dropped(tmp_path):
    path = tmp_path / S.JOURNAL_FILE
    whole = '{"event": "start", "campaign": 0, "at": 0.1}\n'
    path.write_text(whole + '{"event": "sugg')
    events, good = read_journal(path)
    assert events == [{"event": "start", "campaign": 0, "at": 0.1}] and good == len(whole)
    journal = Journal(path, elapsed=lambda: 0.5, keep_bytes=good)  # a resumed run appends
    journal({"event": "done", "campaign": 0})
    journal.close()
    assert read_journal(path)[0][1] == {"event": "done", "campaign": 0, "at": 0.5}


@pytest.mark.ray
def test_the_smoke_suite_gives_the_same_records_twice(smoke_run, tmp_path):
    again = tmp_path / "again"
    assert main(["run", str(SMOKE), "--out", str(again), "--quiet"]) == 0
    a = comparable(pd.read_parquet(smoke_run / S.TRIALS_FILE))
    b = comparable(pd.read_parquet(again / S.TRIALS_FILE))
    assert (a[S.STATUS] != S.OVER_BUDGET).all()  # the cap never binds in the smoke suite
    assert (a[S.STATUS] == S.PRUNED).any()  # two workers, and tpe-prune prunes
    pd.testing.assert_frame_equal(a, b)
    assert len(a) >= 30
    key = [S.TASK, S.METHOD, S.SEED, S.TRIAL_ID, S.STEP]
    ra, rb = (pd.read_parquet(run / S.REPORTS_FILE).sort_values(key).reset_index(drop=True)
              for run in (smoke_run, again))
    pd.testing.assert_frame_equal(ra, rb)
    assert len(ra) >= 30


def _median_pruning(neighbour_first: bool) -> list[bool]:
    """tpe-prune's decisions on trial t0005 while t0004 runs beside it (two workers);
    t0004 reports far better values, and finishes, before or after t0005 reports."""
    task = Task("digits", 60, "small-cnn", image_size=8)
    method = PrunedTPESearch(trials=10, startup_trials=10, pruner="median")
    method.start(Context.of(task, 0, Budget(workers=2)))
    for k in range(4):  # four trials finished and heard: the median pruner's start-up
        trial = f"t{k:04d}"
        config = method.suggest(trial)
        for step in (1, 2, 3):
            assert not method.on_report(trial, step, {"val_nll": 1.0 + k})
        method.on_result(Result(trial, config, S.OK, 1.0 + k))
    beside = method.suggest("t0004")
    method.suggest("t0005")
    if neighbour_first:
        for step in (1, 2, 3):
            method.on_report("t0004", step, {"val_nll": 0.1})
        method.on_result(Result("t0004", beside, S.OK, 0.1))
    return [method.on_report("t0005", step, {"val_nll": 2.2}) for step in (1, 2, 3)]


def test_pruning_does_not_depend_on_the_trial_running_beside():
    # seen from t0000..t0003 alone (median 2.5) 2.2 goes on; had t0004 counted (median 2)
    # it would be pruned, but only when t0004 happened to report first
    assert _median_pruning(False) == _median_pruning(True) == [False, False, False]


def test_a_reader_never_sees_a_partial_table(tmp_path):
    """Tables are replaced whole while a reader reads them over and over (plot, report
    and export read through ``read_table``)."""
    path = tmp_path / S.TRIALS_FILE
    big = pd.DataFrame({"x": range(200_000), "y": ["row"] * 200_000})
    small = pd.DataFrame({"x": [1], "y": ["one"]})
    write_table(path, small)
    stop, seen, errors = threading.Event(), set(), []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add(len(read_table(path)))
            except Exception as err:  # noqa: BLE001 - any failure to read is the bug
                errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(20):
        write_table(path, big if i % 2 else small)
    stop.set()
    reader.join()
    assert not errors and seen <= {1, 200_000}
    assert not [p for p in tmp_path.iterdir() if p.name != S.TRIALS_FILE]  # no temp left
