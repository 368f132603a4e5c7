"""Budgets in one unit (GPU-seconds or CPU core-seconds) and fractional GPUs on Ray, tested
without a GPU: a local Ray cluster given one fake GPU (``ray start --num-gpus 1``) runs four
trials at a quarter GPU each, on the CPU (torch sees no CUDA there)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.analysis.compare import compare_runs, compare_unit
from bench.cli import main
from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.protocol import FinalResult
from bench.driver.campaign import Campaign
from bench.driver.run import check_resources
from bench.driver.budget import Budget
from bench.driver.suite import parse_suite
from bench.records.journal import AT, read_journal
from bench.records.rundir import compute_unit, metadata_unit
from bench.records.tables import write_json, write_table
from bench.worker.trial import trial_device
from bench.zoo.task import Task

RAY = str(Path(sys.executable).with_name("ray"))
TINY = ('[[tasks]]\ndataset = "digits"\nn = 20\nbackbone = "small-cnn"\nbatch_size = 20\n'
        '[methods.grid]\n')


# -- the unit of a budget

def test_the_unit_defaults_to_gpu_with_gpus_and_to_cpu_without():
    assert Budget().unit == "cpu" and Budget().unit_label == "CPU core-seconds"
    gpu = Budget(workers=4, gpus_per_worker=0.25)
    assert gpu.unit == "gpu" and gpu.unit_label == "GPU-seconds" and gpu.charge_rate == 0.25
    as_cpu = Budget(workers=4, cpus_per_worker=2, gpus_per_worker=0.25, unit="cpu")
    assert as_cpu.charge_rate == 2
    suite = parse_suite("[budget]\ngpus_per_worker = 0.5\nworkers = 2\n" + TINY)
    assert suite.budget.unit == "gpu"  # resolved when read: the metadata names it


@pytest.mark.parametrize("budget, message", [
    ("unit = 'tpu'", "budget.unit must be one of 'gpu', 'cpu', got 'tpu'"),
    ("unit = 'gpu'", "counts GPU-seconds but gpus_per_worker is 0"),
    ("cpus_per_worker = 0.001", "cpus_per_worker must be >= 1 when compute is counted in CPU "
                                "core-seconds (a trial uses at least one whole thread)"),
    ("gpus_per_worker = 0.25\nunit = 'cpu'\ncpus_per_worker = 0.5", "must be >= 1 when"),
    ("gpus_per_worker = 1.5", "a fraction in (0, 1] (trials share a GPU) or a whole number"),
])
def test_a_budget_that_would_charge_less_than_it_holds_is_refused(tmp_path, capsys, budget,
                                                                  message):
    path = tmp_path / "bad.toml"
    path.write_text(f"[budget]\n{budget}\n{TINY}")
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_task_cannot_count_in_a_unit_of_its_own():
    with pytest.raises(BenchError, match=r"task 1: unit is the budget's .* same unit"):
        parse_suite(TINY.replace("batch_size = 20\n", "batch_size = 20\nunit = 'gpu'\n"))


def _charged_row(budget: Budget) -> dict:
    """One search trial of 10 wall seconds under ``budget``, on a hand-held clock."""
    from baselines import GridSearch

    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    clock = Clock()
    campaign = Campaign("s", Task("digits", 20, "small-cnn", image_size=8), "grid",
                        GridSearch(max_trials=1), 0, budget, 0.0, clock=clock)
    campaign.next_request("t1")
    campaign.trial_started("t1")
    clock.now = 10.0
    campaign.trial_complete("t1", FinalResult(S.OK, {S.VAL_NLL: 1.0}))
    assert campaign.spent_s == campaign.rows[0][S.RESOURCE_S]  # the cap counts the charge
    return campaign.rows[0]


@pytest.mark.parametrize("budget, resource_s, cpu_s, gpu_s", [
    (Budget(workers=4, cpus_per_worker=1, gpus_per_worker=0.25, cap_s=100), 2.5, 10.0, 2.5),
    (Budget(workers=2, cpus_per_worker=2, cap_s=100), 20.0, 20.0, 0.0),
    (Budget(workers=2, cpus_per_worker=2, gpus_per_worker=1, unit="cpu", cap_s=100),
     20.0, 20.0, 10.0),
])
def test_a_trial_is_charged_in_the_budget_unit_with_cpu_and_gpu_seconds_kept(
        budget, resource_s, cpu_s, gpu_s):
    row = _charged_row(budget)
    assert (row[S.RESOURCE_S], row[S.CPU_S], row[S.GPU_S]) == (resource_s, cpu_s, gpu_s)


def test_fractions_pack_on_whole_gpus():
    suite = parse_suite(TINY)

    def fits(cluster, **budget):
        check_resources(dataclasses.replace(suite, budget=Budget(**budget)), cluster)

    fits({"CPU": 4.0, "GPU": 1.0}, workers=4, gpus_per_worker=0.25)  # workers > GPUs
    fits({"CPU": 8.0, "GPU": 2.0}, workers=6, gpus_per_worker=1 / 3)
    fits({"CPU": 4.0, "GPU": 4.0}, workers=2, gpus_per_worker=2)
    with pytest.raises(BenchError, match=r"needs 5 x 0.4 GPUs but the Ray cluster has 2 "
                                         r"\(it fits 4 trials at 0.4 GPU\)"):
        fits({"CPU": 8.0, "GPU": 2.0}, workers=5, gpus_per_worker=0.4)  # 2.0 GPUs, 2 per GPU
    with pytest.raises(BenchError, match=r"needs 3 x 2 GPUs but the Ray cluster has 4"):
        fits({"CPU": 8.0, "GPU": 4.0}, workers=3, gpus_per_worker=2)
    with pytest.raises(BenchError, match=r"0.25 GPU per worker but the Ray cluster has no GPU "
                                         r"\(run where CUDA is, or .*--address"):
        fits({"CPU": 8.0}, workers=1, gpus_per_worker=0.25)


# -- reading the unit back

def _run_dir(path: Path, metadata: dict, compute: float = 10.0) -> Path:
    path.mkdir()
    row = dict.fromkeys(S.TRIAL_COLUMNS)
    row.update({S.SUITE: "s", S.TASK: "a", S.METHOD: "m", S.PLUGIN: "m", S.SEED: 0,
                S.TRIAL_ID: "t0000", S.KIND: S.LEARNED, S.STATUS: S.OK, S.RESOURCE_S: compute,
                S.OBJECTIVE: 1.0, S.TEST_ACC: 0.5, S.TEST_NLL: 0.5, S.ENDED_S: 1.0})
    write_table(path / S.TRIALS_FILE, pd.DataFrame([row], columns=list(S.TRIAL_COLUMNS)))
    write_json(path / S.METADATA_FILE, {S.REFERENCE: "m"} | metadata)
    return path


def test_the_unit_is_read_from_the_metadata_and_older_runs_still_read():
    trials = pd.DataFrame({S.RESOURCE_S: [3.0], S.CPU_S: [2.0], S.GPU_S: [1.0]})
    gpu = {"budget": {"gpus_per_worker": 0.25, "unit": "gpu"}}
    assert compute_unit(trials, gpu) == "GPU-seconds" and metadata_unit(gpu) == "gpu"
    assert compute_unit(trials, {"budget": {"unit": "cpu"}}) == "CPU core-seconds"
    older = {"budget": {"cpus_per_worker": 1, "gpus_per_worker": 0.25}}  # cpus + gpus charged
    assert compute_unit(trials, older).startswith("resource-seconds") and \
        metadata_unit(older) is None
    assert metadata_unit({"budget": {"cpus_per_worker": 1, "gpus_per_worker": 0}}) == "cpu"


def test_compare_refuses_runs_of_different_units_in_one_line(tmp_path, capsys):
    gpu = _run_dir(tmp_path / "gpu", {"budget": {"unit": "gpu", "gpus_per_worker": 0.25}})
    cpu = _run_dir(tmp_path / "cpu", {"budget": {"unit": "cpu", "gpus_per_worker": 0}})
    assert main(["compare", str(gpu), str(cpu), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different units" in err
    assert "GPU-seconds" in err and "CPU core-seconds" in err
    assert not (tmp_path / "cmp" / "compare.md").exists()
    assert compare_unit({"a": "GPU-seconds", "b": "GPU-seconds"}) == "GPU-seconds"
    other = _run_dir(tmp_path / "gpu2", {"budget": {"unit": "gpu", "gpus_per_worker": 1}})
    text, _ = compare_runs([gpu, other], tmp_path / "same")
    assert "compute in GPU-seconds" in text


def test_published_replays_count_a100_gpu_seconds_at_one_gpu_per_trial():
    root = Path(__file__).resolve().parents[1] / "suites"
    suite = parse_suite((root / "replay-cifar10-resnet50.toml").read_text(), "replay")
    assert (suite.budget.unit, suite.budget.charge_rate) == ("gpu", 1.0)
    text = (root / "replay-cifar10-resnet50.toml").read_text()
    plain = text.replace('gpus_per_worker = 1 ', '# ').replace('unit = "gpu" ', '# ')
    assert parse_suite(plain, "replay").budget.unit == "gpu"  # the default for them
    with pytest.raises(BenchError, match="published records are A100 GPU-seconds"):
        parse_suite(text.replace('unit = "gpu"', 'unit = "cpu"\ncpus_per_worker = 1'), "r")


def test_a_replay_counts_in_its_records_unit(monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the suite names its records relative to the clone
    text = (root / "suites" / "default-search.toml").read_text()
    assert parse_suite(text, "search").budget.unit == "cpu"  # as results/default counted
    gpu = text.replace("cpus_per_worker = 1\n", "cpus_per_worker = 1\ngpus_per_worker = 0.5\n")
    with pytest.raises(BenchError, match=r"unit is 'gpu' but the records in results/default "
                                         r"count CPU core-seconds: set unit = 'cpu'"):
        parse_suite(gpu, "search")


def test_a_gpu_share_trains_on_the_cpu_where_torch_sees_no_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA is here: a GPU share trains on it")
    assert trial_device(0.25) == "cpu" and trial_device(0.0) == "cpu"


@pytest.mark.gpu
def test_an_out_of_memory_at_a_quarter_share_is_that_trials_own():
    """In a process of its own (the memory cap is per process): 0.4 of the GPU's memory at a
    0.25 share fails, and says so; a neighbour process without the cap could still take it."""
    code = textwrap.dedent("""
        import torch
        from bench.worker.trial import out_of_memory, trial_device
        assert trial_device(0.25) == "cuda"
        total = torch.cuda.get_device_properties(0).total_memory
        try:
            torch.empty(int(0.4 * total), dtype=torch.uint8, device="cuda")
        except torch.cuda.OutOfMemoryError as err:
            print(out_of_memory(err, 0.25))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert "out of GPU memory at its 0.25 share" in out.stdout, out.stderr[-2000:]


# -- a local Ray cluster with one fake GPU

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fake_gpu_cluster(tmp_path_factory):
    """``ray start --head --num-gpus 1 --num-cpus 4`` on loopback, as a process this test
    owns (its own temp dir and HOME, no token file); stopped by its process ids after, never
    with ``ray stop`` (that stops every Ray on the machine)."""
    from bench.driver.ray_processes import _stat, descendants

    tmp = tmp_path_factory.mktemp("fake-gpu")
    (tmp / "home").mkdir()
    port = _free_port()
    temp = Path("/tmp") / f"bench-fg-{port}"  # short: Ray's socket paths are bounded
    cache = os.environ.get("BENCH_CACHE") or str(Path.home() / ".cache" / "bench")
    env = dict(os.environ, HOME=str(tmp / "home"), BENCH_CACHE=cache,
               RAY_AUTH_MODE="disabled")
    log = tmp / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--num-cpus=4", "--num-gpus=1", "--include-dashboard=false",
             f"--temp-dir={temp}", "--disable-usage-stats", "--block"],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_AUTH_MODE", "BENCH_CACHE")}
    try:
        deadline = time.monotonic() + 900  # guards a hang only: a loaded machine is slow
        while "block forever" not in log.read_text():
            assert head.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "ray start did not come up"
            time.sleep(0.5)
        os.environ.update(HOME=env["HOME"], RAY_AUTH_MODE="disabled", BENCH_CACHE=cache)
        yield f"127.0.0.1:{port}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        below = [(pid, _stat(pid)) for pid in descendants(head.pid)]
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        time.sleep(1)
        for pid, stat in below:  # only ours: the id still names the process we saw
            if stat is not None and _stat(pid) == stat:
                os.kill(pid, signal.SIGKILL)


CAP = 4.0  # GPU-seconds per (task, method, seed): a few trials' worth at a quarter GPU
FAKE_GPU_SUITE = f"""name = "fake-gpu"
seeds = [0]

[budget]
workers = 4
cpus_per_worker = 1
gpus_per_worker = 0.25     # four trials on the cluster's one (fake) GPU
cap_s = {CAP}

[[tasks]]
name = "packed"
dataset = "digits"
n = 300
backbone = "small-cnn"
image_size = 8
steps = 60
batch_size = 32
test_limit = 200
[tasks.space]
lr = {{ grid = [0.1, 0.05, 0.03, 0.01] }}

[methods.grid]
max_trials = 4

[methods.random]
trials = 100
"""


@pytest.mark.ray
def test_four_quarter_gpu_trials_share_one_fake_gpu(fake_gpu_cluster, tmp_path):
    suite = tmp_path / "fake-gpu.toml"
    suite.write_text(FAKE_GPU_SUITE)
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--quiet",
                 "--address", fake_gpu_cluster]) == 0
    trials = pd.read_parquet(out / S.TRIALS_FILE)
    ran = trials[trials[S.STATUS] != S.REPEAT]
    assert (ran[S.STATUS] != S.FAILED).all(), ran[S.ERROR].dropna().tolist()
    # GPU-seconds: wall x 0.25 is the charge; CPU core-seconds kept beside it
    assert ((ran[S.GPU_S] - 0.25 * ran[S.WALL_S]).abs() < 1e-9).all()
    assert ((ran[S.RESOURCE_S] - ran[S.GPU_S]).abs() < 1e-9).all()
    assert ((ran[S.CPU_S] - ran[S.WALL_S]).abs() < 1e-9).all()
    # the worker saw no CUDA for its GPU share and trained on the CPU
    assert {json.loads(i).get("device") for i in ran[S.INFO].dropna()} == {"cpu"}

    # the grid's four search trials ran at once: all started before any ended
    grid = ran[(ran[S.METHOD] == "grid") & (ran[S.KIND] == S.SEARCH)]
    assert len(grid) == 4
    assert grid[S.STARTED_S].max() < grid[S.ENDED_S].min(), \
        grid[[S.TRIAL_ID, S.STARTED_S, S.ENDED_S]]

    # the cap stopped random search at its GPU-seconds
    tuning = ran[(ran[S.METHOD] == "random") & (ran[S.KIND] != S.RETRAIN)]
    assert 0 < len(tuning) < 100
    assert tuning[S.RESOURCE_S].sum() >= CAP
    # none was suggested once finished ones had spent it (Ray may start a trial suggested
    # just before the cap was reached a moment after: its start time is Ray's, not ours)
    random = 1  # the campaigns: grid 0, random 1 (one task, one seed)
    ids = set(tuning[S.TRIAL_ID])  # those that ran (a repeat is answered, not run)
    suggested = [e[AT] for e in read_journal(out / S.JOURNAL_FILE)[0]
                 if e["event"] == "suggest" and e["campaign"] == random and e["trial"] in ids]
    assert len(suggested) == len(tuning)
    for at in suggested:
        assert tuning.loc[tuning[S.ENDED_S] <= at, S.RESOURCE_S].sum() < CAP

    meta = json.loads((out / S.METADATA_FILE).read_text())
    assert meta["budget"]["unit"] == "gpu" and meta["budget"]["gpus_per_worker"] == 0.25
    assert "Compute is in GPU-seconds" in (out / S.REPORT_FILE).read_text()
    assert "compute (GPU-seconds)" in (out / f"{S.PLOT_STEM}.svg").read_text()


def test_a_gpu_budget_on_a_machine_without_gpus_is_refused_in_one_line(tmp_path, capsys,
                                                                      monkeypatch):
    """Refused before Ray starts and before any task is checked (which may download a data
    set or time a network on the driver's CPU)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    import bench.driver.run as run

    def no(*args, **kwargs):
        raise AssertionError("checked tasks or started Ray before refusing")

    monkeypatch.setattr(run, "check_tasks", no)
    monkeypatch.setattr(run, "_start_ray", no)
    path = tmp_path / "gpu.toml"
    path.write_text("[budget]\nworkers = 2\ngpus_per_worker = 0.25\n" + TINY)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the Ray cluster has no GPU" in err, err
    assert not (tmp_path / "out").exists()


def test_a_gpu_task_is_checked_with_one_image_not_timed_at_its_batch(monkeypatch):
    from bench.driver import preflight
    from bench.driver.suite import parse_suite

    batches = []
    monkeypatch.setattr(preflight, "step_seconds",
                        lambda task, threads, batch_size=None: batches.append(batch_size) or 1.0)
    for gpus, expected in ((0.25, [1]), (0, [None])):
        batches.clear()
        budget = f"[budget]\nworkers = 1\ngpus_per_worker = {gpus}\ncap_s = 1e6\n"
        preflight.check_tasks(parse_suite(budget + TINY, "s.toml"))
        assert batches == expected
