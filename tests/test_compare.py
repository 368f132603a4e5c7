"""bench compare on hand-made run directories, the Friedman/Nemenyi numbers, and bench status
on a hand-made journal (running, killed, finished)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from filelock import FileLock

from bench.analysis.compare import compare_runs, compare_scores, friedman_nemenyi
from bench.analysis.status import format_status, run_status
from bench.cli import main
from bench.contract import schema as s
from bench.records.tables import write_json, write_table


def learned_runs(task, method, seed, *runs) -> list[dict]:
    """Learned runs (compute, accuracy), each better by its objective than the one before,
    so the curve is (cumulative compute, accuracy) per run."""
    rows = []
    for i, (compute, acc) in enumerate(runs):
        row = dict.fromkeys(s.TRIAL_COLUMNS)
        row.update({s.SUITE: "t", s.TASK: task, s.METHOD: method, s.PLUGIN: method,
                    s.SEED: seed, s.TRIAL_ID: f"t{i:04d}", s.KIND: s.LEARNED, s.STATUS: s.OK,
                    s.RESOURCE_S: float(compute), s.OBJECTIVE: 10.0 - i, s.TEST_ACC: acc,
                    s.TEST_NLL: 1 - acc, s.ENDED_S: float(i)})
        rows.append(row)
    return rows


def run_dir(path, reference, *rows):
    path.mkdir()
    write_table(path / s.TRIALS_FILE, pd.DataFrame([r for rs in rows for r in rs],
                                                   columns=list(s.TRIAL_COLUMNS)))
    write_json(path / s.METADATA_FILE, {s.REFERENCE: reference})
    return path


@pytest.fixture
def two_runs(tmp_path):
    # run A, task "a": m1 (10, .5) then (20, .7); m2 (5, .6) then (30, .65); m3 (15, .4)
    a = run_dir(tmp_path / "A", "m1", learned_runs("a", "m1", 0, (10, 0.5), (10, 0.7)),
                learned_runs("a", "m2", 0, (5, 0.6), (25, 0.65)),
                learned_runs("a", "m3", 0, (15, 0.4)))
    # run B, task "a" again (told apart by the run's name): m1 (10, .8); m2 (4, .9)
    b = run_dir(tmp_path / "B", "m1", learned_runs("a", "m1", 0, (10, 0.8)),
                learned_runs("a", "m2", 0, (4, 0.9)))
    return a, b


def test_regrets_and_ranks_hand_computed(two_runs):
    scores = compare_scores(two_runs, fractions=(0.5, 1.0))
    got = scores.set_index(["task", s.METHOD, "fraction"])
    # no grid: anchors from all scored runs of the task (one seed)
    # A: runs .5 .7 .6 .65 .4 -> best .7, median .6; reference m1 ends at 20 -> budgets 10, 20
    assert set(scores["anchor"]) == {"all runs"}
    assert got.loc[("A:a", "m1", 0.5), "regret"] == pytest.approx(2)  # .5
    assert got.loc[("A:a", "m2", 0.5), "regret"] == pytest.approx(1)  # .6
    assert math.isnan(got.loc[("A:a", "m3", 0.5), "regret"])  # no point yet at 10: last
    assert [got.loc[("A:a", m, 0.5), "rank"] for m in ("m1", "m2", "m3")] == [2, 1, 3]
    assert [got.loc[("A:a", m, 1.0), "regret"] for m in ("m1", "m2", "m3")] == \
        pytest.approx([0, 1, 3])
    assert [got.loc[("A:a", m, 1.0), "rank"] for m in ("m1", "m2", "m3")] == [1, 2, 3]
    # B: runs .8 .9 -> best .9, median .85; m1 ends at 10 -> budgets 5 and 10
    assert math.isnan(got.loc[("B:a", "m1", 0.5), "regret"])
    assert got.loc[("B:a", "m2", 0.5), "regret"] == pytest.approx(0)
    assert got.loc[("B:a", "m1", 1.0), "regret"] == pytest.approx(2)
    assert [got.loc[("B:a", m, 1.0), "rank"] for m in ("m1", "m2")] == [2, 1]
    assert set(scores["reference"]) == {"m1"}


def test_compare_writes_table_and_figure(two_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(two_runs[0]), str(two_runs[1]), "--out", str(out)]) == 0
    text = (out / "compare.md").read_text()
    assert "# Comparison over 2 tasks" in text
    # at the reference's final compute: mean ranks m1 (1 + 2) / 2, m2 (2 + 1) / 2, m3 3;
    # mean regrets m1 (0 + 2) / 2, m2 (1 + 0) / 2, m3 3 (1 task: no interval)
    # columns: method, kind, tasks, regret @1/16, @1/4, @1, rank @1/16, @1/4, @1
    cells = {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")]
                               for line in text.splitlines() if line.startswith("| m"))
             if len(c) == 9}
    assert [cells["m1"][i] for i in (2, 5, 8)] == ["2", "1.00 [0.00, 2.00]", "1.50"]
    assert [cells["m2"][i] for i in (2, 5, 8)] == ["2", "0.50 [0.00, 1.00]", "1.50"]
    assert [cells["m3"][i] for i in (2, 5, 8)] == ["1", "3.00", "3.00"]
    assert cells["m1"][3] == "–"  # 1/16 of the reference's compute: no point yet
    assert "No Friedman test" in text  # 2 tasks
    assert sorted(p.name for p in out.iterdir()) == [
        "anytime.png", "anytime.svg", "compare.md", "profile.png", "profile.svg"]
    assert (out / "anytime.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["compare", str(tmp_path / "none")]) == 2
    assert "not a suite run directory" in capsys.readouterr().err


def test_friedman_and_nemenyi_critical_difference(tmp_path):
    rows = []
    for t in range(5):  # m1 > m2 > m3 on every task
        rows += [{"task": f"t{t}", s.METHOD: m, "fraction": 1.0, "acc": acc, "rank": r}
                 for m, acc, r in (("m1", 0.9, 1), ("m2", 0.8, 2), ("m3", 0.7, 3))]
    test = friedman_nemenyi(pd.DataFrame(rows))
    # rank sums 5, 10, 15: chi2 = 12 / (5 * 3 * 4) * (25 + 100 + 225) - 3 * 5 * 4 = 10
    assert test["statistic"] == pytest.approx(10)
    assert test["p"] == pytest.approx(math.exp(-5))  # chi2, 2 degrees of freedom
    # Nemenyi: q(0.05, 3, inf) / sqrt 2 = 2.343 (Demsar 2006, table 5a), sqrt(3 * 4 / 30)
    assert test["cd"] == pytest.approx(2.343 * math.sqrt(12 / 30), abs=1e-3)
    assert test["mean_rank"].to_dict() == {"m1": 1, "m2": 2, "m3": 3}
    assert friedman_nemenyi(pd.DataFrame(rows[:12])) is None  # 4 tasks: too few


# --- bench status --------------------------------------------------------------------------

SUITE = """
name = "st"
seeds = [0]
[budget]
cap_s = 100
[[tasks]]
dataset = "animal-mnist"
n = 100
backbone = "small-cnn"
[[tasks]]
name = "second"
dataset = "animal-mnist"
n = 100
backbone = "small-cnn"
cap_s = 40
[methods.grid]
[methods.de-elbo]
"""


def _row(trial, kind, resource, **kw):
    row = {s.TASK: "animal-mnist-N100-small-cnn", s.METHOD: "grid", s.SEED: 0,
           s.TRIAL_ID: trial, s.KIND: kind, s.STATUS: s.OK, s.RESOURCE_S: resource}
    return {**row, **kw}


def journal_dir(tmp_path, finished: bool = False, name: str = "run"):
    run = tmp_path / name
    run.mkdir()
    (run / s.SUITE_FILE).write_text(SUITE)
    write_json(run / s.METADATA_FILE, {"suite": "st", "budget": {"cap_s": 100},
                                       **({"ended": "now"} if finished else {})})
    events = [
        {"event": "start", "campaign": 0},
        {"event": "suggest", "campaign": 0, "trial": "t0000", "hp": {}},
        {"event": "suggest", "campaign": 0, "trial": "t0001", "hp": {}},
        {"event": "complete", "campaign": 0, "trial": "t0000",
         "row": _row("t0000", s.SEARCH, 12.5, val_nll=1.25)},
        {"event": "suggest", "campaign": 0, "trial": "t0000-retrain", "hp": {}},
        {"event": "complete", "campaign": 0, "trial": "t0000-retrain",
         "row": _row("t0000-retrain", s.RETRAIN, 5.0, retrain_of="t0000", test_acc=0.6)},
        {"event": "start", "campaign": 1},  # de-elbo: nothing finished yet
        {"event": "suggest", "campaign": 1, "trial": "t0000", "hp": {}},
    ]
    with open(run / s.JOURNAL_FILE, "w") as f:
        for i, e in enumerate(events):
            f.write(json.dumps({**e, "at": float(i)}) + "\n")
        f.write('{"event": "complete", "camp')  # torn by a kill
    return run


def test_status_of_a_killed_run(tmp_path, capsys):
    run = journal_dir(tmp_path)
    table, facts = run_status(run)
    assert not facts["finished"] and not facts["alive"] and facts["campaigns"] == 4
    first = table.iloc[0]
    assert (first[s.TASK], first[s.METHOD], first["state"]) == \
        ("animal-mnist-N100-small-cnn", "grid", "cut short")
    assert (first["trials"], first["retrains"], first["running"]) == (1, 1, 1)
    assert (first["spent_s"], first["cap_s"]) == (12.5, 100)  # retrains are not capped
    assert first["incumbent"] == "t0000 val_nll 1.2500, test acc 60.00%"
    second = table.iloc[1]  # named from the suite's plan: task 1, seed 0, method 2
    assert (second[s.METHOD], second["trials"], second["running"], second["incumbent"]) == \
        ("de-elbo", 0, 1, "-")
    assert list(table["state"].iloc[2:]) == ["waiting", "waiting"]  # the plan's other two
    assert list(table[s.TASK].iloc[2:]) == ["second", "second"]
    assert list(table["cap_s"].iloc[2:]) == [40, 40]  # the task's own cap
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "stopped: no driver holds it" in out and "0 of 4 campaigns done" in out
    assert "12 / 100" in out


def test_status_while_running_and_when_finished(tmp_path):
    run = journal_dir(tmp_path)
    lock = FileLock(run / s.LOCK_FILE)
    with lock:
        table, facts = run_status(run)
        assert facts["alive"] and list(table["state"]) == ["running"] * 2 + ["waiting"] * 2
        assert "running (a driver holds the run)" in format_status(table, facts)
    assert not run_status(run)[1]["alive"]  # the lock released: a dead driver's state
    done = journal_dir(tmp_path, finished=True, name="done")
    table, facts = run_status(done)
    assert facts["finished"] and format_status(table, facts).startswith("st: finished")


def test_status_of_a_replay_reads_its_trials(two_runs):
    table, facts = run_status(two_runs[0])
    assert facts["finished"] and len(table) == 3 and set(table["state"]) == {"done"}
    m1 = table.set_index(s.METHOD).loc["m1"]
    assert (m1["trials"], m1["spent_s"]) == (2, 20)
    assert m1["incumbent"] == "t0001 objective 9, test acc 70.00%"
    assert pd.isna(m1["cap_s"])  # no suite file: no cap known


# --- the suite's reference field ------------------------------------------------------------

REFERENCE_SUITE = """
seeds = [0]
[[tasks]]
dataset = "digits"
n = 20
backbone = "small-cnn"
batch_size = 20
steps = 2
[methods.random]
trials = 1
[methods.full]
method = "grid"
max_trials = 1
"""


def test_suite_reference_defaults_to_the_first_grid_plugin():
    from bench.contract.errors import BenchError
    from bench.driver.suite import parse_suite

    assert parse_suite(REFERENCE_SUITE).reference == "full"  # not the label "grid"
    assert parse_suite('reference = "random"\n' + REFERENCE_SUITE).reference == "random"
    no_grid = REFERENCE_SUITE.replace('method = "grid"\nmax_trials', 'method = "random"\ntrials')
    assert parse_suite(no_grid).reference is None
    with pytest.raises(BenchError, match=r"reference must be one of the method labels "
                                         r"\(random, full\), got 'grid'"):
        parse_suite('reference = "grid"\n' + REFERENCE_SUITE, "s.toml")
