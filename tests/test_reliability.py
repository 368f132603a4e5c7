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
from bench.contract.protocol import EpochReport, FinalResult
from bench.driver.budget import Budget
from bench.driver.campaign import Campaign, CampaignQueue, without_cut_short
from bench.driver.replay import SimulatedClock, simulate
from bench.records.journal import AT, Journal, read_journal, rewrite_journal
from bench.records.recorded import Recorded, RecordedTask
from bench.records.tables import comparable, frame, read_table, write_table
from bench.worker.faults import parse_faults
from bench.zoo.task import Task
from baselines import GridSearch, PrunedTPESearch, RandomSearch

ROOT = Path(__file__).resolve().parents[1]

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


def _cut_short_now(out: Path) -> bool:
    """Whether the journal shows a trial reported and not completed: a kill now leaves the
    reports of an attempt cut short."""
    journal = out / S.JOURNAL_FILE
    return journal.is_file() and bool(_cut_short(read_journal(journal)[0]))


def _stop_after(suite: Path, out: Path, completions: int, sig: int, resume: bool = False,
                mid_trial: bool = False) -> subprocess.Popen:
    """Run (or resume) the suite into ``out`` and send ``sig`` once the journal holds
    ``completions`` trials (and, with ``mid_trial``, a trial reported and not completed)."""
    proc = _bench("run", str(suite), "--resume" if resume else "--out", str(out), "--quiet")
    deadline = time.monotonic() + 240
    while proc.poll() is None and (_completions(out) < completions
                                   or (mid_trial and not _cut_short_now(out))):
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait()
    return proc


@pytest.mark.ray
@pytest.mark.parametrize("kills", [3])
def test_a_run_killed_again_and_again_resumes_to_the_uninterrupted_records(whole, tmp_path,
                                                                           kills):
    """Kill, resume, kill the resume, ...: each time a trial is cut short after reporting
    (issue 26: its reports were restored beside the rerun's)."""
    suite = tmp_path / "resume.toml"
    suite.write_text(RESUME_SUITE)
    out = tmp_path / "killed"
    total = len(pd.read_parquet(whole / S.TRIALS_FILE))
    rng = random.Random()
    kill_at = [rng.randint(1, total // 3)]
    proc = _stop_after(suite, out, kill_at[0], signal.SIGKILL, mid_trial=True)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    for _ in range(kills - 1):
        kill_at.append(_completions(out) + rng.randint(1, 2))
        proc = _stop_after(suite, out, kill_at[-1], signal.SIGKILL, resume=True,
                           mid_trial=True)
        assert proc.returncode == -signal.SIGKILL, (kill_at, proc.stdout.read())
    assert main(["run", str(suite), "--resume", str(out), "--quiet"]) == 0

    pd.testing.assert_frame_equal(comparable(pd.read_parquet(whole / S.TRIALS_FILE)),
                                  comparable(pd.read_parquet(out / S.TRIALS_FILE)),
                                  obj=f"trials, killed after {kill_at} completions")
    key = [S.METHOD, S.TRIAL_ID, S.STEP]
    reports_a, reports_b = (pd.read_parquet(run / S.REPORTS_FILE) for run in (whole, out))
    drop = [c for c in (S.TRAIN_S, S.EVAL_S) if c in reports_a]  # timings, if recorded
    pd.testing.assert_frame_equal(
        reports_a.drop(columns=drop).sort_values(key).reset_index(drop=True),
        reports_b.drop(columns=drop).sort_values(key).reset_index(drop=True),
        obj=f"reports, killed after {kill_at} completions")
    journal, _ = read_journal(out / S.JOURNAL_FILE)
    completes = [(e["campaign"], e["trial"]) for e in journal if e["event"] == "complete"]
    logged = [(e["campaign"], e["trial"], e["report"][S.STEP]) for e in journal
              if e["event"] == "report"]
    assert len(completes) == len(set(completes)) == total, kill_at
    assert len(logged) == len(set(logged)) == len(reports_a), kill_at
    assert len(json.loads((out / S.METADATA_FILE).read_text())["resumed"]) == kills


# a driver that SIGKILLs itself right after its journal took the n-th event of a kind: a
# kill at an exact stage of the run
KILL_AT_EVENT = """import os, signal, sys
from bench.records import journal
kind, nth = sys.argv[1], int(sys.argv[2])
seen, write = [], journal.Journal.__call__
def kill_after(self, line):
    write(self, line)
    if line["event"] == kind:
        seen.append(line)
        if len(seen) == nth:
            os.kill(os.getpid(), signal.SIGKILL)
journal.Journal.__call__ = kill_after
from bench.cli import main
sys.exit(main(sys.argv[3:]))
"""

# each kill in the chain below, as (event, n-th of this driver's own journal lines): right
# after a trial is handed to a worker that is still starting; mid-trial (reported, not
# finished); between two trials; once a campaign is done and others are not; after the
# last campaign is done and before the run is marked ended (None: the campaigns left)
STAGES = [("suggest", 1), ("report", 2), ("complete", 2), ("done", 1), ("done", None)]


@pytest.mark.ray
def test_a_run_killed_at_each_stage_of_the_pool_resumes_to_the_uninterrupted_records(
        whole, tmp_path):
    suite = tmp_path / "resume.toml"
    suite.write_text(RESUME_SUITE)
    script = tmp_path / "kill_at.py"
    script.write_text(KILL_AT_EVENT)
    out = tmp_path / "killed"
    campaigns, snapshot = 3, None
    for number, (kind, nth) in enumerate(STAGES):
        flag = "--resume" if number else "--out"
        if number:
            done = sum(e["event"] == "done" for e in read_journal(out / S.JOURNAL_FILE)[0])
            assert done <= campaigns - (2 if nth == 1 else 1), (kind, done)
            nth = nth or campaigns - done
        proc = subprocess.run([sys.executable, str(script), kind, str(nth), "run", str(suite),
                               flag, str(out), "--quiet"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, (kind, proc.stdout + proc.stderr)
        journal, _ = read_journal(out / S.JOURNAL_FILE)
        assert journal[-1]["event"] == kind, kind
        assert "ended" not in json.loads((out / S.METADATA_FILE).read_text())
        if kind == "complete":
            snapshot = journal
        if not number:  # a fresh run may not write into it; the resume goes on
            assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 2
    assert main(["run", str(suite), "--resume", str(out), "--quiet"]) == 0
    pd.testing.assert_frame_equal(comparable(pd.read_parquet(whole / S.TRIALS_FILE)),
                                  comparable(pd.read_parquet(out / S.TRIALS_FILE)))
    key = [S.METHOD, S.TRIAL_ID, S.STEP]
    a, b = (pd.read_parquet(run / S.REPORTS_FILE).sort_values(key, ignore_index=True)
            for run in (whole, out))
    pd.testing.assert_frame_equal(a, b)
    journal, _ = read_journal(out / S.JOURNAL_FILE)
    completes = [(e["campaign"], e["trial"]) for e in journal if e["event"] == "complete"]
    assert len(completes) == len(set(completes)) == len(pd.read_parquet(whole / S.TRIALS_FILE))
    assert len(json.loads((out / S.METADATA_FILE).read_text())["resumed"]) == len(STAGES)
    # the compute spent before a kill is counted as recorded, and suite time goes on
    records = pd.read_parquet(out / S.TRIALS_FILE).set_index([S.METHOD, S.TRIAL_ID])
    kept = {(e["row"][S.METHOD], e["trial"]): e["row"] for e in snapshot
            if e["event"] == "complete"}
    assert kept and all(records.loc[k, S.RESOURCE_S] == row[S.RESOURCE_S]
                        for k, row in kept.items())
    later = records[[k not in kept for k in records.index]]
    assert len(later) and (later[S.STARTED_S] >= snapshot[-1]["at"] - 1e-6).all()


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


# -- killed and resumed again and again (issue 26): one attempt of each trial is kept
#
# On the replay backend a "kill" is a prefix of a session's journal that leaves a trial
# with reports and no completion; the next session resumes from it as the driver does
# (bench.driver.run.run_suite: without_cut_short, restore, the journal rewritten, restored).

TOY_LRS, TOY_ALPHAS = (0.1, 0.01, 0.001), (0.01, 0.0)


def _toy_records() -> pd.DataFrame:
    rows = []
    for i, (lr, alpha) in enumerate((lr, a) for lr in TOY_LRS for a in TOY_ALPHAS):
        common = {S.TASK: "toy", S.METHOD: "grid", S.SEED: 0, S.STATUS: S.OK,
                  S.CONFIG: json.dumps({"alpha": alpha, "lr": lr}),
                  S.INFO: json.dumps({"epoch_s": 1.0})}
        nll = 0.5 + 0.13 * ((5 * i) % 6)
        rows.append({**common, S.KIND: S.SEARCH, S.WALL_S: 4.0 + (3 * i) % 5, S.VAL_NLL: nll})
        rows.append({**common, S.KIND: S.RETRAIN, S.WALL_S: 5.0, S.TEST_ACC: 1 - nll / 2})
    return frame(rows, S.TRIAL_COLUMNS)


def _toy_session(journal_path: Path, events: list[dict] | None = None) -> list:
    """One driver session on the replay backend, to the end of the suite (two campaigns,
    two workers): from scratch, or resumed from ``events``. Returns its campaigns."""
    recorded = Recorded(_toy_records())
    task = RecordedTask("toy", recorded.space("toy"))
    clock, built = SimulatedClock(), []

    def plan(label, method):
        def build():
            built.append(Campaign("toy", task, label, method, 0, Budget(workers=2, cap_s=1e9),
                                  0.0, clock=clock, discrete=True))
            return built[-1]
        return build

    queue = CampaignQueue([plan("grid", GridSearch(retrain_all=True)),
                           plan("random", RandomSearch(trials=4))])
    if events is not None:
        clock.now = events[-1][AT]
        events = without_cut_short(events)
        queue.restore(events)
        rewrite_journal(journal_path, events)
    queue.log = journal = Journal(journal_path, clock)
    queue.restored()
    simulate(queue, recorded, 2, clock)
    journal.close()
    assert queue.finished
    return built


def _cut_short(events: list[dict]) -> set[tuple[int, str]]:
    """Trials a kill after ``events`` leaves reported and not completed."""
    done = {(e["campaign"], e["trial"]) for e in events if e["event"] == "complete"}
    return {(e["campaign"], e["trial"]) for e in events if e["event"] == "report"} - done


def _kills_after(events: list[dict], earlier: set) -> list[int]:
    """Journal lengths a kill could leave: a trial cut short, and every trial an earlier
    kill cut short completed since (its reports now those of the attempt that completed)."""
    done_at = {(e["campaign"], e["trial"]): i for i, e in enumerate(events)
               if e["event"] == "complete"}
    after = max([done_at[t] for t in earlier], default=0)
    return [n for n in range(after + 1, len(events) + 1) if _cut_short(events[:n])]


def _tables(campaigns) -> tuple[pd.DataFrame, pd.DataFrame]:
    key = [S.METHOD, S.TRIAL_ID, S.STEP]
    reports = frame([r for c in campaigns for r in c.reports], S.REPORT_COLUMNS)
    return (comparable(frame([r for c in campaigns for r in c.rows], S.TRIAL_COLUMNS)),
            reports.sort_values(key).reset_index(drop=True))


@pytest.mark.parametrize("kills", [1, 2, 3])
@pytest.mark.parametrize("draw", range(6))
def test_killed_and_resumed_again_and_again_keeps_one_attempt_of_each_trial(tmp_path, kills,
                                                                            draw):
    whole = _tables(_toy_session(tmp_path / "whole.jsonl"))
    path = tmp_path / S.JOURNAL_FILE
    _toy_session(path)
    rng = random.Random(100 * kills + draw)
    cuts, earlier = [], set()
    for _ in range(kills):
        events, _ = read_journal(path)
        candidates = _kills_after(events, earlier)
        cuts.append(rng.choice(candidates[:max(1, len(candidates) // 2)]))  # room for more
        earlier = _cut_short(events[:cuts[-1]])
        campaigns = _toy_session(path, events[:cuts[-1]])
    trials, reports = _tables(campaigns)
    pd.testing.assert_frame_equal(trials, whole[0], obj=f"trials, kills at {cuts}")
    pd.testing.assert_frame_equal(reports, whole[1], obj=f"reports, kills at {cuts}")
    events, _ = read_journal(path)  # and the journal holds each report once
    logged = [(e["campaign"], e["trial"], e["report"][S.STEP]) for e in events
              if e["event"] == "report"]
    assert len(logged) == len(set(logged)) == len(whole[1]), cuts


# -- a resume that is refused writes nothing (issue 26): its checks all come first

LEDGER_SUITE = """name = "ledger"
seeds = [0]
[budget]
workers = 1
cpus_per_worker = 1
cap_s = 300
""" + TASK + """
[methods.grid]
max_trials = 3

[methods.random]
trials = 2
"""


def _killed_run(out: Path, completions: int) -> None:
    """A run directory as a driver killed after ``completions`` trials leaves it, written by
    the harness's own campaigns, journal and tables; the trials' results are made up (no
    training, no Ray): what a resume checks is the journal."""
    from bench.driver.run_output import RunView, run_metadata
    from bench.driver.suite import parse_suite
    from bench.records.tables import write_json, write_text

    suite = parse_suite(LEDGER_SUITE)
    out.mkdir()
    write_json(out / S.METADATA_FILE, run_metadata(suite))
    write_text(out / S.SUITE_FILE, suite.source)
    view = RunView(suite, out, progress=False)
    journal = Journal(out / S.JOURNAL_FILE, time.perf_counter)
    queue = CampaignQueue(view.builders(suite), on_done=view.done, log=journal)
    for number in range(completions):
        request = queue.suggest(f"w{number}")
        queue.started(f"w{number}")
        queue.report(f"w{number}", EpochReport(5, {S.TRAIN_LOSS: 1.0}))
        nll = 1 + sum(request.hp.values())
        queue.complete(f"w{number}", FinalResult(S.OK, {S.VAL_NLL: nll, S.TEST_ACC: 1 / nll}))
    queue.suggest("cut")  # a trial running when the driver died
    journal.close()
    view.write_trials(force=True)
    view.write_reports(force=True)


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# (a line appended to the journal of a killed run, the one line a resume is refused with;
# "journal.jsonl, line N": a line no harness writes, which bench status refuses too)
BAD_JOURNAL = [
    ('{"x": 1}', "journal.jsonl, line {n}: no 'event' (every line is an event"),
    ('{"event": "start", "campaign": 99, "at": 99}',
     "journal.jsonl line {n}: it starts campaign 99 where 2 comes next"),
    ('{"event": "start", "campaign": 1}', "journal.jsonl, line {n}: start event without its "
                                          'suite time ("at": a number)'),
    ('{"event": "suggest", "campaign": 7, "trial": "t0000", "hp": {}, "at": 5}',
     "journal.jsonl line {n}: a suggest event of campaign 7, which was never started"),
    ('{"event": "tell", "campaign": 0, "trial": "t0000", "at": 5}',
     "journal.jsonl line {n}: a tell event of campaign 0, which was done"),
    ('{"event": "complete", "campaign": 1, "trial": "t0001", "row": {}, "at": 5}',
     "journal.jsonl, line {n}: complete event of t0001: its row has no 'trial_id'"),
    ("[1, 2]", "journal.jsonl, line {n}: expected a JSON object, got list"),
    ("{not json", "journal.jsonl, line {n}: not a line of JSON"),
]


@pytest.mark.parametrize("line, message", BAD_JOURNAL)
def test_a_resume_refused_for_its_journal_writes_nothing(tmp_path, monkeypatch, capsys, line,
                                                         message):
    import tempfile

    out = tmp_path / "run"
    _killed_run(out, completions=8)  # the grid's 3 trials and retrains done, random begun
    with open(out / S.JOURNAL_FILE, "a") as f:
        f.write(line + "\n")
    n = len((out / S.JOURNAL_FILE).read_text().splitlines())
    (tmp_path / "suite.toml").write_text(LEDGER_SUITE)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # bench-ray-* go here
    (tmp_path / "tmp").mkdir()
    before = _files(out)
    for argv in (["run", str(tmp_path / "suite.toml"), "--resume", str(out), "--quiet"],
                 ["status", str(out)]):
        if argv[0] == "status" and ", line" not in message:
            continue  # the order of events is the resume's to check; status shows them
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message.format(n=n) in err and err.count("\n") == 1, err
        assert _files(out) == before and not list((tmp_path / "tmp").glob("bench-ray-*"))
