"""Run directories the readers cannot use (a table cut short, metadata that is no object, a
table of other columns, a directory that takes no file) and compare's own bad arguments:
one line naming the file and what is wrong, exit status 2, nothing written (issue 26)."""

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.contract import schema as S


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A finished run directory, made by replaying published records (no Ray, seconds)."""
    root = tmp_path_factory.mktemp("recorded")
    (root / "replay.toml").write_text(
        'name = "recorded"\nrecords = "published:cifar10-resnet50"\nseeds = [1001]\n'
        '[budget]\ncap_s = 1e12\n[[tasks]]\nname = "cifar10-resnet50-N100"\n'
        '[methods.random]\ntrials = 3\n[methods.grid]\n')
    assert main(["replay", str(root / "replay.toml"), "--out", str(root / "run"),
                 "--quiet"]) == 0
    return root / "run"


def _truncated(run: Path) -> None:
    path = run / S.TRIALS_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _metadata_list(run: Path) -> None:
    (run / S.METADATA_FILE).write_text("[1, 2]\n")


def _metadata_torn(run: Path) -> None:
    (run / S.METADATA_FILE).write_text('{"suite": "recor')


def _other_columns(run: Path) -> None:
    pd.DataFrame({"a": [1], "b": ["x"]}).to_parquet(run / S.TRIALS_FILE)


def _no_trials(run: Path) -> None:  # a run killed before its first trial ended
    table = pd.read_parquet(run / S.TRIALS_FILE)
    table.iloc[:0].to_parquet(run / S.TRIALS_FILE)


READ_ONLY = "read-only"  # made so around the command, undone after


def _files(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


# (damage done to a copy {run} of a finished run, argv, the one line's message);
# {replay}: a replay suite whose records are {run}; {tmp}: the test's directory
BAD_READS = [
    (_no_trials, ["report", "{run}"], "{run}: no trial has ended yet (trials.parquet is empty)"),
    (_no_trials, ["plot", "{run}"], "{run}: no trial has ended yet (trials.parquet is empty)"),
    (_truncated, ["plot", "{run}"], "{run}/trials.parquet: cannot be read as a Parquet table"),
    (_truncated, ["report", "{run}"], "{run}/trials.parquet: cannot be read as a Parquet"),
    (_truncated, ["status", "{run}"], "{run}/trials.parquet: cannot be read as a Parquet"),
    (_truncated, ["compare", "{run}", "--out", "{tmp}/cmp"],
     "{run}/trials.parquet: cannot be read as a Parquet table"),
    (_truncated, ["export", "{run}", "--csv"], "{run}/trials.parquet: cannot be read as a"),
    (_truncated, ["replay", "{replay}", "--out", "{tmp}/replayed"],
     "{run}/trials.parquet: cannot be read as a Parquet table"),
    (_metadata_list, ["plot", "{run}"],
     "{run}/metadata.json: expected a JSON object (the run's metadata), got a list"),
    (_metadata_list, ["report", "{run}"], "{run}/metadata.json: expected a JSON object"),
    (_metadata_list, ["status", "{run}"], "{run}/metadata.json: expected a JSON object"),
    (_metadata_torn, ["report", "{run}"], "{run}/metadata.json: not valid JSON"),
    (_other_columns, ["status", "{run}"], "{run}/trials.parquet: not a trials table of this "
                                          "harness (missing column(s) task, method, seed"),
    (_other_columns, ["report", "{run}"], "{run}/trials.parquet: not a trials table"),
    (READ_ONLY, ["report", "{run}"], "cannot write {run}/report.md: "),
    (READ_ONLY, ["plot", "{run}"], "cannot write {run}/tradeoff.png: "),
    (READ_ONLY, ["export", "{run}", "--csv"], "cannot write {run}/trials.csv: "),
    (READ_ONLY, ["compare", "{run}", "--out", "{run}/cmp"], "cannot write {run}/compare.md"),
    (None, ["compare", "{run}", "--out", "{run}/trials.parquet"],
     "compare: --out {run}/trials.parquet is a file, not a directory"),
    (None, ["compare", "{run}", "--out", "{run}/trials.parquet/cmp"],
     "compare: --out {run}/trials.parquet/cmp ({run}/trials.parquet) is a file"),
    (None, ["compare", "{run}", "{run}", "--out", "{tmp}/cmp"],
     "compare: {run} is named twice; name each run once"),
    (None, ["compare", "{run}", "{run}/", "--out", "{tmp}/cmp"],
     "compare: {run} and {run}/ are the same run directory"),
    (None, ["compare", "{run}", "{run}/../run", "--out", "{tmp}/cmp"],
     "compare: {run} and {run}/../run are the same run directory"),
]


def _make_read_only(path: Path) -> None:
    """As the root user (whom permission bits do not stop) the immutable attribute."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot make a directory read-only for root here: chattr +i failed "
                    f"({done.stderr.strip() or done.returncode})")


def _undo_read_only(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o755)


def _case(damage, argv) -> str:
    what = damage if isinstance(damage, str) else getattr(damage, "__name__", "args")
    return f"{what.strip('_')}-{argv[0]}"


@pytest.mark.parametrize("damage, argv, message", BAD_READS,
                         ids=[_case(d, a) for d, a, _ in BAD_READS])
def test_a_run_directory_that_cannot_be_read_is_one_line_and_exit_2(
        damage, argv, message, recorded, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(recorded, run)
    (tmp_path / "replay.toml").write_text(
        f'name = "again"\nrecords = "{run}"\nseeds = [1001]\n'
        '[budget]\nunit = "gpu"\ngpus_per_worker = 1\n[[tasks]]\n'
        'name = "cifar10-resnet50-N100"\n[methods.random]\ntrials = 2\n')
    if callable(damage):
        damage(run)
    fill = {"run": run, "tmp": tmp_path, "replay": tmp_path / "replay.toml"}
    before = _files(tmp_path)
    if damage == READ_ONLY:
        _make_read_only(run)
    try:
        status = main([a.format(**fill) for a in argv])
    finally:
        if damage == READ_ONLY:
            _undo_read_only(run)
    captured = capsys.readouterr()
    assert status == 2, captured
    assert captured.err.startswith("bench: error: ") and captured.err.count("\n") == 1
    assert message.format(**fill) in captured.err, captured.err
    assert captured.out == ""
    assert _files(tmp_path) == before  # nothing written, nothing removed


def test_two_runs_of_one_folder_name_are_named_by_their_paths(recorded, tmp_path,
                                                              monkeypatch, capsys):
    for parent in ("x", "y"):
        shutil.copytree(recorded, tmp_path / parent / "run")
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "x/run", "y/run", "--out", "cmp"]) == 0
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "`x/run`, `y/run`" in text
    assert "| x/run:cifar10-resnet50-N100 |" in text and "| y/run:cifar10-resnet50-N100 |" in text
    capsys.readouterr()
