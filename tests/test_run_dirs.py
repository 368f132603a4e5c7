"""Run directories are the harness's own (issue 26): ``--out`` never replaces a file the
harness did not write, a replay takes the lock a live run takes, and a replay refuses
records that cannot serve its methods. Each case is a row: the command, what it is
refused with (one line, exit 2), and that nothing was written. No Ray, no training."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.contract import schema as S
from bench.driver.run_output import (holds_harness_run, lock_run_dir, release_run_dir,
                                     run_metadata)
from bench.driver.suite import parse_suite
from bench.records.tables import frame, write_json, write_table

ROOT = Path(__file__).resolve().parents[1]
LRS, ALPHAS = (0.1, 0.01, 0.001), (0.01, 0.001, 0.0001, 0.0)
CONFIGS = [{"alpha": a, "lr": lr} for lr in LRS for a in ALPHAS]  # a 12-point grid

LIVE = """name = "mine"
[[tasks]]
dataset = "digits"
n = 60
backbone = "small-cnn"
image_size = 8
batch_size = 16
[methods.random]
trials = 1
"""


def _records(path: Path, searched=len(CONFIGS), retrain_all=True, ended=True,
             metadata=True) -> Path:
    """A grid's run directory: the first ``searched`` configurations searched, every one
    retrained (``retrain_all``) or only each new incumbent; finished or not."""
    rows, best = [], None
    for i, config in enumerate(CONFIGS[:searched]):
        nll = 0.4 + 0.1 * ((7 * i) % 12)
        own = {S.SUITE: "grid", S.TASK: "curves", S.METHOD: "grid", S.SEED: 0,
               S.STATUS: S.OK, S.CONFIG: json.dumps(config), S.WALL_S: 10.0}
        rows.append({**own, S.TRIAL_ID: f"t{i:04d}", S.KIND: S.SEARCH, S.VAL_NLL: nll})
        if retrain_all or best is None or nll < best:
            best = nll if best is None else min(best, nll)
            rows.append({**own, S.TRIAL_ID: f"t{i:04d}-retrain", S.KIND: S.RETRAIN,
                         S.RETRAIN_OF: f"t{i:04d}", S.TEST_ACC: 1 / (1 + nll)})
    path.mkdir()
    write_table(path / S.TRIALS_FILE, frame(rows, S.TRIAL_COLUMNS))
    if metadata:
        write_json(path / S.METADATA_FILE, {**run_metadata(parse_suite(LIVE)),
                                            **({"ended": "then"} if ended else {})})
    return path


def _replay_suite(records: Path, name: str = "mine", trials: int = 4) -> str:
    return (f'name = "{name}"\nrecords = "{records}"\nseeds = [0]\n'
            "[budget]\nworkers = 1\ncpus_per_worker = 1\ncap_s = 1e12\n"
            '[[tasks]]\nname = "curves"\n'
            f"[methods.random]\ntrials = {trials}\n")


def _users_own(path: Path) -> Path:
    """A directory of the user's own files, named as a run's are."""
    path.mkdir()
    (path / "report.md").write_text("# my notes\n")
    (path / "suite.toml").write_text('name = "my own"\n')
    (path / "metadata.json").write_text('{"author": "me"}\n')
    (path / "tradeoff.png").write_bytes(b"\x89PNG my plot")
    return path


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())} if path.is_dir() else {}


# (argv with {live}, {replay}, {mine}, {records}: a whole grid's records, {unfinished},
# {cut} (max_trials = 6), {incumbents} (no retrain_all); the one line it is refused with)
REFUSED = [
    (["run", "{live}", "--out", "{mine}"], "output {mine} is a directory of other files "
     "(metadata.json, report.md, suite.toml, tradeoff.png) that holds no bench run"),
    (["replay", "{replay}", "--out", "{mine}"], "output {mine} is a directory of other files"),
    (["run", "{replay}", "--out", "{mine}"], "output {mine} is a directory of other files"),
    (["run", "{live}", "--out", ""], "run: argument --out: an empty path names no directory"),
    (["replay", "{replay}", "--out", ""],
     "replay: argument --out: an empty path names no directory"),
    (["run", "{live}", "--resume", ""],
     "run: argument --resume: an empty path names no directory"),
    (["run", "{live}", "--resume", "{mine}"], "cannot resume {mine}: no journal.jsonl there"),
    (["run", "{live}", "--resume", "{nosuite}"], "cannot resume {nosuite}: its suite.toml is "
     "missing"),
    (["replay", "{unfinished}", "--out", "{tmp}/out"],
     "records {records_unfinished} are a run that has not finished"),
    (["replay", "{cut}", "--out", "{tmp}/out"], "records {records_cut} hold search runs of 6 "
     "of the 8 configurations their values span for task curves at seed 0"),
    (["replay", "{incumbents}", "--out", "{tmp}/out"], "records {records_incumbents} retrain "
     "only 1 of the 12 configurations searched for task curves at seed 0"),
]


@pytest.mark.parametrize("argv, message", REFUSED)
def test_a_run_directory_that_is_not_the_harnesss_is_refused(tmp_path, monkeypatch, capsys,
                                                            argv, message):
    monkeypatch.chdir(tmp_path)  # where runs/<name> would go
    mine = _users_own(tmp_path / "mine")
    fill = {"tmp": tmp_path, "mine": mine, "live": tmp_path / "live.toml",
            "nosuite": tmp_path / "nosuite"}
    fill["nosuite"].mkdir()
    (fill["nosuite"] / S.JOURNAL_FILE).write_text("")
    fill["live"].write_text(LIVE)
    for name, kwargs in [("replay", {}), ("unfinished", {"ended": False}),
                         ("cut", {"searched": 6}), ("incumbents", {"retrain_all": False})]:
        fill[f"records_{name}"] = _records(tmp_path / f"records_{name}", **kwargs)
        fill[name] = tmp_path / f"{name}.toml"
        fill[name].write_text(_replay_suite(fill[f"records_{name}"]))
    before = {p.name: _files(p) for p in tmp_path.iterdir()}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(**fill) in err and err.count("\n") == 1, err
    assert {p.name: _files(p) for p in tmp_path.iterdir()} == before  # nothing written


def test_records_of_a_whole_finished_grid_replay(tmp_path):
    suite = tmp_path / "replay.toml"
    suite.write_text(_replay_suite(_records(tmp_path / "records")))
    assert main(["replay", str(suite), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    trials = pd.read_parquet(tmp_path / "out" / S.TRIALS_FILE)
    assert (trials[S.STATUS].isin([S.OK, S.REPEAT])).all() and len(trials) >= 5
    # records without metadata (written by other tools) are taken as they are
    suite.write_text(_replay_suite(_records(tmp_path / "bare", metadata=False)))
    assert main(["replay", str(suite), "--out", str(tmp_path / "out2"), "--quiet"]) == 0


def test_a_directory_a_driver_started_in_and_left_may_be_run_into_again(tmp_path):
    """A driver killed before its first trial leaves its metadata (with the harness's
    mark), its lock file and Ray record: the directory is the harness's, run into again,
    and files the user added beside are left alone."""
    out = tmp_path / "started"
    out.mkdir()
    write_json(out / S.METADATA_FILE, run_metadata(parse_suite(LIVE)))
    (out / S.LOCK_FILE).write_text("")
    (out / "notes.txt").write_text("mine\n")
    assert holds_harness_run(out) and not holds_harness_run(_users_own(tmp_path / "mine"))
    suite = tmp_path / "replay.toml"
    suite.write_text(_replay_suite(_records(tmp_path / "records")))
    assert main(["replay", str(suite), "--out", str(out), "--quiet"]) == 0
    assert (out / "notes.txt").read_text() == "mine\n"
    assert json.loads((out / S.METADATA_FILE).read_text())["backend"] == "replay"
    assert not (out / S.LOCK_FILE).exists()  # released and removed


def test_a_replay_into_a_directory_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    lock = lock_run_dir(out)  # as a live run, a resume or another replay holds it
    try:
        suite = tmp_path / "replay.toml"
        suite.write_text(_replay_suite(_records(tmp_path / "records")))
        assert main(["replay", str(suite), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another bench run" in err and err.count("\n") == 1
        assert sorted(p.name for p in out.iterdir()) == [S.LOCK_FILE]  # nothing written
    finally:
        release_run_dir(lock)


def test_two_replays_into_one_directory_at_once(tmp_path):
    """One is refused in one line (the directory is in use, or already holds the other's
    run); every file of the directory is the other's."""
    records = _records(tmp_path / "records")
    out = tmp_path / "out"
    procs = {}
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.toml").write_text(_replay_suite(records, name, trials=12))
    for name in ("alpha", "beta"):
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "bench", "replay", str(tmp_path / f"{name}.toml"), "--out",
             str(out), "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
    results = {name: (proc.wait(timeout=300), *proc.communicate()) for name, proc in
               procs.items()}
    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, 2], results
    [winner] = [name for name, (code, _, _) in results.items() if code == 0]
    [(_, _, err)] = [r for r in results.values() if r[0] == 2]
    assert err.count("\n") == 1 and (f"{out} is in use by another bench run" in err
                                     or f"output {out} already holds a run" in err), err
    meta = json.loads((out / S.METADATA_FILE).read_text())
    assert meta["suite"] == winner and "ended" in meta
    assert f'name = "{winner}"' in (out / S.SUITE_FILE).read_text()
    for table in (S.TRIALS_FILE, S.REPORTS_FILE):
        assert set(pd.read_parquet(out / table)[S.SUITE]) == {winner}, table
    assert f"# " in (out / S.REPORT_FILE).read_text()
