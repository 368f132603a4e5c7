"""What a suite shows as it runs: one line per trial where stderr is not a terminal, a live
display on one (driven here through a small replay on a rich console writing to a string),
nothing with --quiet. The numbers the display ends with are worked out from the records."""

import pickle
import re
from io import StringIO

import pandas as pd
import pytest
from rich.console import Console

from bench.contract import schema as S
from bench.driver import live_display
from bench.driver.replay_suite import parse_replay_suite, run_replay

SUITE = """
name = "progress-test"
records = "published:cifar10-resnet50-v1"
seeds = [1001, 2001]
[budget]
workers = 2
cpus_per_worker = 1
cap_s = 1e12
[[tasks]]
name = "cifar10-resnet50-v1-N100"
cap_s = 20000
[[tasks]]
name = "cifar10-resnet50-v1-N1000"
[methods.grid]
[methods.random]
trials = 6
"""
CAMPAIGNS = 2 * 2 * 2  # tasks x seeds x methods
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def terminal(monkeypatch):
    """A terminal 160 columns wide whose screen is a string."""
    screen = StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    monkeypatch.setattr(live_display, "terminal_console", lambda: console)
    return screen


def _replay(tmp_path, progress=True, name="out") -> tuple[pd.DataFrame, object]:
    suite = parse_replay_suite(SUITE)
    out = run_replay(suite, tmp_path / name, progress=progress)
    return pd.read_parquet(out / S.TRIALS_FILE), suite


@pytest.mark.ray
def test_plain_lines_where_stderr_is_not_a_terminal(tmp_path, capsys):
    trials, _ = _replay(tmp_path)
    lines = capsys.readouterr().err.splitlines()
    assert sum(line.endswith(": start") for line in lines) == CAMPAIGNS
    assert sum(": done, " in line for line in lines) == CAMPAIGNS
    assert sum("best val_nll" in line for line in lines) == len(trials)  # one a trial
    assert lines[0].startswith(f"[1/{CAMPAIGNS}] cifar10-resnet50-v1-N100 | grid | seed 1001")


@pytest.mark.ray
def test_quiet_shows_nothing_even_on_a_terminal(tmp_path, terminal, capsys):
    _replay(tmp_path, progress=False)
    assert terminal.getvalue() == "" and capsys.readouterr().err == ""


@pytest.mark.ray
def test_live_display_ends_with_the_campaigns_compute_and_incumbents(tmp_path, terminal):
    trials, suite = _replay(tmp_path)
    screen = ANSI.sub("", terminal.getvalue())
    last = screen[screen.rindex("replay progress-test:"):]  # the last drawing

    spent = trials.loc[trials[S.KIND] != S.RETRAIN, S.RESOURCE_S].sum()
    caps = 2 * 2 * (20000 + 1e12)  # seeds x methods x the tasks' caps
    assert (f"{CAMPAIGNS}/{CAMPAIGNS} campaigns done, 0 trials running\n"
            f"compute {spent:,.0f}/{caps:.3g} {suite.budget.unit_label}") in last
    assert "finished" in last
    for task in (t.name for t in suite.tasks):  # its latest campaign: random, seed 2001
        tuning = trials[(trials[S.TASK] == task) & (trials[S.METHOD] == "random") &
                        (trials[S.SEED] == 2001) & (trials[S.KIND] != S.RETRAIN)]
        mine = tuning[(tuning[S.KIND] == S.SEARCH) & (tuning[S.STATUS] == S.OK)]
        best = mine[S.VAL_NLL].min()
        row = next(line for line in last.splitlines() if line.startswith(task))
        assert row.split()[1:5] == ["random", "\N{CHECK MARK}", "2001", str(len(tuning))]
        score, trial = row.split()[-2:]
        assert score == f"{best:.4f}"
        assert trial in set(mine.loc[mine[S.VAL_NLL] == best, S.TRIAL_ID])
    quiet, _ = _replay(tmp_path, progress=False, name="quiet")
    assert trials.equals(quiet)  # the display changes no record


def test_a_shown_display_pickles_without_its_terminal(terminal):
    """Ray Tune pickles its searcher, which holds the driver's callbacks and so the display."""
    suite = parse_replay_suite(SUITE)
    display = live_display.LiveDisplay(suite, [], live_display.terminal_console())
    display.campaign(None)  # the first event: the display is shown
    try:
        copy = pickle.loads(pickle.dumps(display))
    finally:
        display.stop()
    assert copy.live is None and copy.console is None and copy.total == CAMPAIGNS
    assert f"replay progress-test: 0/{CAMPAIGNS} campaigns done" in terminal.getvalue()
