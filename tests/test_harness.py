"""The harness end to end: the smoke suite through real Ray, caps, records, bad suites."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.driver.budget import Budget
from bench.driver.suite import load_suite, parse_suite
from bench.zoo.task import Task
from baselines import RandomSearch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.toml"
LEARNED_METHODS = {"de-elbo", "elbo", "laplace-marglik", "ntk-marglik"}


@pytest.mark.ray
def test_smoke_suite_writes_records_plot_and_report(smoke_run):
    for name in (S.TRIALS_FILE, S.REPORTS_FILE, S.METADATA_FILE, S.SUITE_FILE, S.REPORT_FILE,
                 S.PLOT_STEM + ".png", S.PLOT_STEM + ".svg"):
        assert (smoke_run / name).stat().st_size > 0, name
    trials = pd.read_parquet(smoke_run / S.TRIALS_FILE)
    assert list(trials.columns) == list(S.TRIAL_COLUMNS)
    assert set(trials[S.METHOD]) == {"grid", "random", "tpe", "tpe-prune"} | LEARNED_METHODS
    learned = trials[trials[S.KIND] == S.LEARNED]
    assert set(learned[S.METHOD]) == LEARNED_METHODS and (learned[S.STATUS] == S.OK).all()
    assert learned[S.OBJECTIVE].notna().all() and learned[S.TEST_ACC].between(0, 1).all()
    assert learned[S.VAL_NLL].isna().all()  # no validation data anywhere
    infos = {m: json.loads(i) for m, i in zip(learned[S.METHOD], learned[S.INFO])}
    assert "lambda" in infos["de-elbo"] and "precisions" in infos["laplace-marglik"]
    search = trials[(trials[S.KIND] == S.SEARCH) & (trials[S.STATUS] == S.OK)]
    assert search[S.VAL_NLL].notna().all() and search[S.TEST_ACC].isna().all()
    retrain = trials[trials[S.KIND] == S.RETRAIN]
    assert len(retrain) >= 4 and retrain[S.TEST_ACC].between(0, 1).all()
    assert set(retrain[S.RETRAIN_OF]) <= set(search[S.TRIAL_ID])
    assert (trials[S.RESOURCE_S] > 0).all() and trials[S.NODE].notna().all()
    assert (trials[S.WALL_S] + 1e-9 >= trials[S.TRAIN_S].fillna(0) + trials[S.EVAL_S].fillna(0)).all()
    # the retrained incumbent beats chance by far (10 classes)
    assert retrain[S.TEST_ACC].max() > 0.5
    meta = json.loads((smoke_run / S.METADATA_FILE).read_text())
    assert meta["versions"]["ray"] and meta["machine"]["cpus"] and meta["budget"]["workers"] == 2
    report = (smoke_run / S.REPORT_FILE).read_text()
    assert all(m in report for m in ("grid", "random", "tpe", "tpe-prune", *LEARNED_METHODS))


@pytest.mark.ray
def test_pruning_method_prunes_and_reports_reach_the_records(smoke_run):
    trials = pd.read_parquet(smoke_run / S.TRIALS_FILE)
    pruned = trials[(trials[S.METHOD] == "tpe-prune") & (trials[S.STATUS] == S.PRUNED)]
    assert len(pruned) >= 1
    reports = pd.read_parquet(smoke_run / S.REPORTS_FILE)
    tpe_prune = reports[reports[S.METHOD] == "tpe-prune"]
    assert tpe_prune[S.VAL_NLL].notna().any()


@pytest.mark.ray
def test_every_method_stays_within_the_cap(smoke_run):
    cap = json.loads((smoke_run / S.METADATA_FILE).read_text())["budget"]["cap_s"]
    trials = pd.read_parquet(smoke_run / S.TRIALS_FILE)
    tuning = trials[trials[S.KIND] != S.RETRAIN]
    assert (tuning.groupby([S.TASK, S.METHOD, S.SEED])[S.RESOURCE_S].sum() <= cap).all()


@pytest.mark.ray
def test_report_and_export_commands_read_a_run(smoke_run, capsys):
    assert main(["report", str(smoke_run)]) == 0
    assert "| grid |" in capsys.readouterr().out
    assert main(["export", str(smoke_run), "--csv"]) == 0
    table = pd.read_csv(smoke_run / "trials.csv")
    assert len(table) == len(pd.read_parquet(smoke_run / S.TRIALS_FILE))


@pytest.mark.ray
def test_a_tight_cap_stops_trials_on_ray(tmp_path):
    suite = SMOKE.read_text().split("[methods.grid]")[0].replace("cap_s = 40", "cap_s = 4")
    suite = suite.replace("steps = 30", "steps = 150") + "[methods.random]\ntrials = 50\n"
    path = tmp_path / "tight.toml"
    path.write_text(suite)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    trials = pd.read_parquet(tmp_path / "out" / S.TRIALS_FILE)
    tuning = trials[trials[S.KIND] != S.RETRAIN]
    assert len(tuning) < 50
    # no trial starts after the cap is spent; running ones stop at their next report
    assert tuning[S.RESOURCE_S].sum() <= 4 + 2 * tuning[S.RESOURCE_S].max()
    assert (tuning[S.STATUS] == S.OVER_BUDGET).any()


SPACE = "[[tasks]]\ndataset = 'digits'\nn = 60\nbackbone = 'small-cnn'\n[tasks.space]\n"

BAD_SUITES = [
    ("name = 'x'\n[budget\n", "malformed TOML"),
    ("colour = 1\n", "unknown key 'colour'"),
    ("[budget]\ncap_s = 0\n", "cap_s must be a number > 0"),
    ("[budget]\ncap_s = -5\n", "cap_s must be a number > 0"),
    ("[budget]\nworkers = 0\n", "workers must be an integer >= 1"),
    ("[budget]\nspeed = 1\n", "unknown key 'speed'"),
    ("[[tasks]]\ndataset = 'nope'\nn = 10\nbackbone = 'small-cnn'\n", "unknown data set 'nope'"),
    ("[[tasks]]\ndataset = 'digits'\nn = 10\nbackbone = 'nope'\n", "unknown backbone 'nope'"),
    ("[[tasks]]\ndataset = 'digits'\nn = 10\nbackbone = 'small-cnn'\nregularizer = 'l3'\n",
     "unknown regularizer 'l3'"),
    ("[[tasks]]\ndataset = 'digits'\nn = 10\nbackbone = 'small-cnn'\nlr = 1\n", "unknown key 'lr'"),
    ("[methods.nope]\n", "unknown method 'nope'"),
    ("[methods.grid]\nmax_trails = 3\n",
     "method 'grid' has no option 'max_trails'; it has: max_trials, retrain_all"),
    ("[methods.tpe-prune]\npruner = 'magic'\n", "unknown pruner 'magic'"),
    ("[[tasks]]\ndataset = 'digits'\nn = 99999\nbackbone = 'small-cnn'\n", "exceeds the 1438"),
    ("[[tasks]]\ndataset = 'digits'\nn = 10\nbackbone = 'small-cnn'\n[tasks.space]\n"
     "lr = { grid = [] }\n", "grid must be a non-empty list"),
    ("[[tasks]]\ndataset = 'digits'\nn = 10\nbackbone = 'small-cnn'\n[tasks.space]\n"
     "gamma = { grid = [1.0] }\n", "no hyperparameter 'gamma'"),
    ("[[tasks]]\ndataset = 'digits'\nn = 10\nbackbone = 'small-cnn'\n[tasks.space]\n"
     "lr = { low = 0.1, high = 0.01, grid = [0.1] }\n", "bad range for lr"),
    ("[[tasks]]\ndataset = 'digits'\nn = 10\nbackbone = 'small-cnn'\n[tasks.space]\n"
     "alpha = { grid = [0.0, 1e-3] }\n", "must be positive"),
    ("[[tasks]]\ndataset = 'digits'\nn = 10\nbackbone = 'small-cnn'\ncap_s = -1\n",
     "task cap_s must be a number > 0"),
    ("seeds = []\n", "seeds must be a non-empty list"),
    pytest.param("[budget]\ngpus_per_worker = 0.25\n", "no GPU", marks=pytest.mark.ray),
    pytest.param("[budget]\nworkers = 64\n", "Ray cluster has 2", marks=pytest.mark.ray),
    ("[[tasks]]\ndataset = 'digits'\nn = 10\nbackbone = 'small-cnn'\nimage_size = 2\n",
     "small-cnn needs image_size >= "),
    ("[[tasks]]\ndataset = 'digits'\nn = 10\nbackbone = 'small-cnn'\nsteps = 5000\n"
     "batch_size = 8\ncap_s = 0.05\n", "is smaller than one trial"),
    ("[methods.random]\ntrials = 1\n[methods.random]\ntrials = 2\n", "malformed TOML"),
    ("[budget]\ncap_s = inf\n", "cap_s must be a number > 0, got inf"),
    ("[budget]\ncap_s = true\n", "cap_s must be a number > 0, got True"),
    ("seeds = [-1]\n", "seeds must be a non-empty list of integers >= 0"),
    ("[[tasks]]\ndataset = 'digits'\nn = 50.5\nbackbone = 'small-cnn'\n",
     "task 1: task n must be an integer >= 2, got 50.5"),
    ("[[tasks]]\ndataset = 'digits'\nn = 'many'\nbackbone = 'small-cnn'\n",
     "task n must be an integer >= 2, got 'many'"),
    ("[[tasks]]\ndataset = 'digits'\nn = 10\nbackbone = 'small-cnn'\nsteps = 0\n",
     "task steps must be an integer >= 1, got 0"),
    ("[[tasks]]\ndataset = 'digits'\nn = 10\nbackbone = 'small-cnn'\n[tasks.space]\n"
     "lr = { grid = [0.1], log = 'yes' }\n", "space.lr: log must be true or false"),
    # method options are checked by starting each method on every task and seed
    ("[methods.random]\ntrials = -5\n", "[methods.random]: trials must be an integer >= 1"),
    ("[methods.random]\ntrials = 'ten'\n", "trials must be an integer >= 1, got 'ten'"),
    ("[methods.grid]\nmax_trials = 0\n", "max_trials must be an integer >= 1, got 0"),
    ("[methods.grid]\nretrain_all = 1\n", "retrain_all must be true or false, got 1"),
    ("[methods.tpe]\nstartup_trials = -1\n", "startup_trials must be an integer >= 0"),
    ("[methods.de-elbo]\nlrs = []\n", "[methods.de-elbo]: lrs must be a non-empty list"),
    ("[methods.ntk-marglik]\nlrs = [-0.1]\n", "lrs must be a non-empty list of numbers > 0"),
    ("[methods.laplace-marglik]\nhyper_steps = 0\n", "hyper_steps must be an integer >= 1"),
    ("[methods.ntk-marglik]\nsubset_size = 2.5\n", "subset_size must be an integer >= 1"),
    ("[methods.elbo]\nkappa = true\n", "kappa must be 'data-emphasized' or a number > 0"),
    # numbers no training accepts, refused before anything runs (issue 16)
    (SPACE + "lr = { low = 0.01, high = 0.1, grid = [-0.1] }\n",
     "task 1 space.lr: lr -0.1 is not a learning rate training accepts"),
    (SPACE + "lr = { low = 0.01, high = 0.1, grid = [0.0] }\n",
     "task 1 space.lr: lr 0.0 is not a learning rate"),
    (SPACE + "lr = { grid = [-0.1] }\n", "task 1 space.lr: log-uniform range for lr must be"),
    (SPACE + "lr = { low = 0.01, high = 1e308, grid = [1e308] }\n",
     "task 1 space.lr: lr 1e+308 is not a learning rate"),
    (SPACE + "alpha = { low = 1e-6, high = 1e-2, grid = [-1.0] }\n",
     "task 1 space.alpha: hyperparameter alpha must be a finite number >= 0, got -1.0"),
    (SPACE + "beta = { low = 1e-6, high = 1e39, grid = [1e39] }\n",
     "task 1 space.beta: beta 1e+39 is infinite in float32"),
    (SPACE + "lr = { low = 0.1, high = 0.01, grid = [0.1] }\n",
     "task 1 space.lr: bad range for lr"),  # the range error names the task
    ("seeds = [18446744073709551616]\n", "seed must be an integer from 0 to 4294967295"),
    ("seeds = [4294967296]\n", "seed must be an integer from 0 to 4294967295"),
    ("[[tasks]]\ndataset = 'digits'\nn = 60\nbackbone = 'small-cnn'\n"
     "batch_size = 1000000000000\n", "task 1: batch_size 1000000000000 is larger than n = 60"),
    ("[[tasks]]\ndataset = 'digits'\nn = 2\nbackbone = 'small-cnn'\nbatch_size = 2\n",
     "n = 2 is smaller than the 10 classes of digits"),
    # the run name becomes the default run directory: one safe path component
    ("name = '../../x'\n", "name must be a string of letters, digits"),
    ("name = '/tmp/abs'\n", "name must be a string of letters, digits"),
    ("name = '..'\n", "name must be a string of letters, digits"),
    ("name = ''\n", "name must be a string of letters, digits"),
    ("name = 'a\\nb'\n", "name must be a string of letters, digits"),
    ("name = 'a\\u0000b'\n", "name must be a string of letters, digits"),
    ("name = 42\n", "name must be a string of letters, digits and _ . + - (at most 100, not "
                    "starting with . or -), got 42"),
    ("x = " + "[" * 5000 + "\n", "malformed TOML: nested too deeply"),
    # issue 26: messages in the user's words, no silent defaults
    ("[[tasks]]\n", "task 1: missing dataset, n, backbone (required)"),
    ("[[tasks]]\ndataset = 'digits'\nbackbone = 'small-cnn'\n", "task 1: missing n (required)"),
    ("[[tasks]]\ndataset = 'digits'\nn = 60\nbackbone = 'small-cnn'\ntest_limit = 100000\n",
     "test_limit 100000 exceeds the"),
    ('[methods."a|b"]\nmethod = "random"\ntrials = 1\n', "method label 'a|b' must be letters"),
    ('[methods.""]\nmethod = "random"\ntrials = 1\n', "method label '' must be letters"),
    ('[methods."a,b"]\nmethod = "random"\ntrials = 1\n', "method label 'a,b' must be letters"),
    ('[methods."a\\nb"]\nmethod = "random"\ntrials = 1\n', "method label 'a\\nb' must be"),
]

BASE = """name = "bad"
[[tasks]]
dataset = "digits"
n = 60
backbone = "small-cnn"
image_size = 8
[methods.random]
trials = 1
"""


def _merge(snippet: str) -> str:
    """Put the snippet's tables in place of the base suite's."""
    base = BASE
    if snippet.startswith("name ="):
        base = base.split("\n", 1)[1]
    if "[[tasks]]" in snippet:
        base = base.split("[[tasks]]")[0] + "[methods.random]\ntrials = 1\n"
    if "[methods." in snippet:
        base = base.split("[methods.random]")[0]
    return snippet + "\n" + base if not snippet.startswith("[") else base + "\n" + snippet


@pytest.mark.parametrize("snippet, message", BAD_SUITES)
def test_bad_suites_exit_2_with_one_line_and_write_nothing(snippet, message, tmp_path, capsys):
    if "cpus" in message or "GPU" in message or "cluster" in message:
        pytest.importorskip("ray")
    path = tmp_path / "bad.toml"
    path.write_text(_merge(snippet))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1
    assert not out.exists()


def test_a_method_that_cannot_start_is_refused_with_where(monkeypatch):
    import baselines

    def start(self, context):
        raise ZeroDivisionError("boom\nsecond line")

    monkeypatch.setattr(baselines.GridSearch, "start", start)
    with pytest.raises(BenchError) as err:
        parse_suite(_merge("[methods.grid]\n"), "s.toml")
    assert str(err.value) == ("s.toml [methods.grid]: cannot start on task digits-N60-small-cnn, "
                              "seed 0: ZeroDivisionError: boom")


def test_output_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "ok.toml"
    path.write_text(BASE)
    (tmp_path / "afile").write_text("x")
    assert main(["run", str(path), "--out", str(tmp_path / "afile")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"


def test_output_that_is_not_writable_is_refused(tmp_path, capsys):
    path = tmp_path / "ok.toml"
    path.write_text(BASE)
    out = Path("/sys/bench-out")  # not writable, even by root (who ignores permission bits)
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is not writable" in err and err.count("\n") == 1
    assert not out.exists()


def test_missing_suite_file_is_refused(capsys):
    assert main(["run", "no/such/suite.toml"]) == 2
    assert "cannot read suite" in capsys.readouterr().err


def test_python_dash_m_bench_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--help"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "--address" in proc.stdout


class _Clock:
    now = 0.0

    def __call__(self):
        return self.now


class _PrunesAll(RandomSearch):
    name = "prunes-all"
    reports_validation = True

    def on_report(self, trial_id, step, metrics):
        return True


@pytest.mark.parametrize("cap_s, status", [(100.0, S.PRUNED), (5.0, S.OVER_BUDGET)])
def test_a_stopped_trial_keeps_what_it_measured(cap_s, status):
    """Ray stops a pruned or over-budget trial at a report, with no final record: its row
    keeps the report's steps, seconds in fit and validation metrics, so its compute is
    not counted as the harness's overhead."""
    from bench.driver.campaign import Campaign
    from bench.contract.protocol import Decision, EpochReport

    clock = _Clock()
    task = Task("digits", 60, "small-cnn", image_size=8, batch_size=16)
    campaign = Campaign("s", task, "p", _PrunesAll(trials=1), 0,
                        Budget(workers=1, cap_s=cap_s), 0.0, clock=clock)
    campaign.next_request("ray1")
    campaign.trial_started("ray1")
    clock.now = 10.0
    report = EpochReport(4, {S.TRAIN_LOSS: 1.5, S.VAL_NLL: 1.25, S.VAL_ACC: 0.5},
                         steps_done=4, fit_s=8.5, node="n")
    assert campaign.trial_report("ray1", report) == Decision.STOP
    clock.now = 11.0
    campaign.trial_complete("ray1", None)  # a stopped trial sends no final result
    row = campaign.rows[0]
    assert row[S.STATUS] == status and row[S.STEPS_DONE] == 4
    assert row[S.TRAIN_S] == 8.5 and row[S.OVERHEAD_S] == pytest.approx(2.5)
    assert row[S.VAL_NLL] == 1.25 and row[S.VAL_ACC] == 0.5 and row.get(S.TEST_ACC) is None
    assert campaign.best is None  # a stopped trial is never the incumbent
    assert json.loads(campaign.reports[0][S.METRICS] or "{}") == {}  # timings stay out


@pytest.mark.ray
def test_the_next_driver_cleans_up_the_ray_a_killed_driver_left(tmp_path):
    """After SIGKILL the driver's Ray (GCS, raylet, workers) lives on and its temporary
    directory stays; --resume stops those processes by their recorded ids and removes it."""
    import os
    import signal
    import time

    from bench.driver import ray_processes

    suite = tmp_path / "s.toml"
    suite.write_text(BASE.replace("trials = 1", "trials = 3") + "[budget]\nworkers = 1\n")
    out = tmp_path / "out"
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--out",
                                 str(out), "--quiet"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (
                (out / S.JOURNAL_FILE).exists()
                and '"complete"' in (out / S.JOURNAL_FILE).read_text()):
            time.sleep(0.5)
        record = json.loads((out / S.RAY_FILE).read_text())
    finally:
        proc.send_signal(signal.SIGKILL)  # the driver this test started
        proc.wait()

    def alive() -> list[int]:
        return [p["pid"] for p in record["processes"]
                if (ray_processes._stat(p["pid"]) or (0, -1))[1] == p["start"]]

    assert record["driver_pid"] == proc.pid and len(record["processes"]) >= 2
    left = alive()
    assert left and Path(record["temp_dir"]).is_dir()  # what issue 16 saw
    below = [d for pid in left for d in ray_processes.descendants(pid)]
    assert main(["run", str(suite), "--resume", str(out), "--quiet"]) == 0
    assert alive() == [] and not Path(record["temp_dir"]).exists()
    assert not any(ray_processes._stat(pid) for pid in below)  # workers under the raylet
    assert not (out / S.RAY_FILE).exists()
    assert os.getpid() not in left


def test_reap_stops_only_recorded_processes_of_this_host(tmp_path):
    """A process is stopped only if its id and kernel start time match the record (a
    reused id is spared), and a record made on another machine stops nothing."""
    import platform
    import tempfile

    from bench.driver import ray_processes

    proc = subprocess.Popen(["sleep", "300"])  # stands in for a dead driver's raylet
    try:
        start = ray_processes._stat(proc.pid)[1]
        temp = Path(tempfile.mkdtemp(prefix=ray_processes.TEMP_PREFIX))

        def reap(host: str, started: int) -> dict:
            (tmp_path / S.RAY_FILE).write_text(json.dumps(
                {"host": host, "driver_pid": 1, "temp_dir": str(temp),
                 "processes": [{"pid": proc.pid, "start": started}]}))
            return ray_processes.reap(tmp_path)

        assert reap("another-machine", start) == {"stopped": [], "removed": None}
        assert temp.is_dir() and proc.poll() is None
        assert reap(platform.node(), start + 1)["stopped"] == []  # the id was reused
        assert proc.poll() is None and not temp.exists()
        assert reap(platform.node(), start)["stopped"] == [proc.pid]
        assert proc.wait(timeout=10) == -15 and not (tmp_path / S.RAY_FILE).exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_suite_without_a_name_says_the_name_came_from_its_file(tmp_path, capsys):
    path = tmp_path / "my suite.toml"
    path.write_text(BASE.split("\n", 1)[1])
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "the suite sets no name, so its file's name must be" in err and "'my suite'" in err


def test_a_byte_order_mark_is_read_as_the_editor_meant(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff".encode() + BASE.encode())
    assert load_suite(path).name == "bad"


def test_a_huge_value_is_cut_in_the_middle_of_the_one_line(tmp_path, capsys):
    path = tmp_path / "huge.toml"
    path.write_text(f"name = '{'x' * 1_000_000}'\n" + BASE.split("\n", 1)[1])
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 500
    assert "name must be a string of letters" in err and "characters left out" in err


def test_the_readmes_self_labeling_options_can_be_tuned():
    """issue 26: ``temperature`` and ``correct_threshold`` in a self-labeling task's space
    were refused as hyperparameters of the regularizer; they are tuned, and checked by
    self-labeling's own rules."""
    task = ("[[tasks]]\ndataset = 'digits'\nn = 60\nbackbone = 'small-cnn'\nimage_size = 8\n"
            "self_labeling = {}\n[tasks.space]\n"
            "temperature = { low = 0.5, high = 8, grid = [1, 2, 4] }\n"
            "correct_threshold = { low = 0.5, high = 0.99, grid = [0.8, 0.9], log = false }\n")
    suite = parse_suite(_merge(task), "s.toml")
    assert {"temperature", "correct_threshold"} <= {p.name for p in suite.tasks[0].search_space()}
    with pytest.raises(BenchError, match="space.correct_threshold: self_labeling.correct_thr"):
        parse_suite(_merge(task.replace("grid = [0.8, 0.9]", "grid = [0.8, 1.5]")), "s.toml")
