"""Beyond one machine: a real multi-node Ray cluster on loopback, and GPU budgets."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.protocol import FinalResult
from bench.driver.campaign import Campaign
from bench.driver.run import check_resources
from bench.driver.budget import Budget
from bench.driver.suite import parse_suite
from bench.zoo.task import Task

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Node:
    """``ray start ... --block`` as a process this test owns: stopping it (SIGTERM) stops
    that node's Ray processes; any of them still alive after are killed by id. Never
    ``ray stop``, which stops every Ray on the machine, other users' included."""

    def __init__(self, args: list[str], env: dict, log: Path) -> None:
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([RAY, "start", *args, "--block"], env=env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def wait_started(self, timeout: float = 900) -> None:
        """Until the node blocks; the timeout only guards against a hang (a loaded
        machine starts Ray slowly: 180 s was not enough beside two reference runs)."""
        deadline = time.monotonic() + timeout
        while "block forever" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "ray start did not come up"
            time.sleep(0.5)

    def stop(self) -> None:
        from bench.driver.ray_processes import _stat, descendants

        below = [(pid, _stat(pid)) for pid in descendants(self.proc.pid)]
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        time.sleep(1)
        for pid, stat in below:  # only ours: the id still names the process we saw
            if stat is not None and _stat(pid) == stat:
                os.kill(pid, signal.SIGKILL)


# token first: the README's way; disabled only where the network is isolated
AUTH_MODES = ["token", "disabled"]


def _home(root: Path, machine: str) -> Path:
    (root / machine / ".ray").mkdir(parents=True)
    return root / machine


@pytest.fixture(params=AUTH_MODES)
def two_node_cluster(request, tmp_path):
    """A head and one worker node, each with one CPU, on this machine, started as the
    README's cluster block says, each "machine" (head, worker, driver) with a home of its
    own: with token authentication, the head's token (``ray get-auth-token --generate``)
    copied to the worker's and the driver's ``~/.ray/auth_token`` and ``RAY_AUTH_MODE=token``
    in every shell; or ``RAY_AUTH_MODE=disabled`` in every shell. Yields the address and
    the environment of each machine's shell; torn down after."""
    mode = request.param
    cache = os.environ.get("BENCH_CACHE") or str(Path.home() / ".cache" / "bench")
    shells = {machine: dict(os.environ, BENCH_CACHE=cache,  # data and weights stay put
                            HOME=str(_home(tmp_path / "homes", machine)), RAY_AUTH_MODE=mode)
              for machine in ("head", "worker", "driver", "stranger")}
    if mode == "token":
        subprocess.run([RAY, "get-auth-token", "--generate"], env=shells["head"], check=True,
                       capture_output=True)
        token = Path(shells["head"]["HOME"]) / ".ray" / "auth_token"
        for machine in ("worker", "driver"):  # the stranger has none
            shutil.copy(token, Path(shells[machine]["HOME"]) / ".ray" / "auth_token")
    port = _free_port()
    temp = Path("/tmp") / f"bench-cl-{port}"  # short: Ray's socket paths are bounded
    nodes: list[_Node] = []
    try:
        nodes.append(_Node(["--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                            "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
                            f"--temp-dir={temp}", "--disable-usage-stats"], shells["head"],
                           tmp_path / "head.log"))
        nodes[-1].wait_started()
        nodes.append(_Node([f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                            "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"],
                           shells["worker"], tmp_path / "worker.log"))
        nodes[-1].wait_started()
        yield f"127.0.0.1:{port}", shells
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(temp, ignore_errors=True)


def _bench(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """``bench`` in a shell of its own (a driver machine): its home, its token or none."""
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)


@pytest.mark.ray
def test_smoke_suite_runs_on_a_two_node_cluster(two_node_cluster, tmp_path):
    address, shells = two_node_cluster
    out = tmp_path / "out"
    suite = (ROOT / "suites" / "smoke.toml").read_text()
    suite = suite.split("[methods.tpe]")[0]  # grid and random: enough trials for both nodes
    (tmp_path / "cluster.toml").write_text(suite)
    run = ["run", str(tmp_path / "cluster.toml"), "--quiet", "--address", address]
    if shells["driver"]["RAY_AUTH_MODE"] == "token":  # a driver without the token: refused
        stranger = _bench(run + ["--out", str(tmp_path / "stranger")], shells["stranger"])
        assert stranger.returncode == 2, stranger.stderr[-3000:]
        assert stranger.stderr.splitlines()[-1] == (
            f"bench: error: --address {address}: RAY_AUTH_MODE=token but no token here: copy "
            "the head's ~/.ray/auth_token to this machine (or set RAY_AUTH_TOKEN_PATH)")
        assert not (tmp_path / "stranger").exists()
    done = _bench(run + ["--out", str(out)], shells["driver"])
    assert done.returncode == 0, done.stderr[-3000:]
    trials = pd.read_parquet(out / S.TRIALS_FILE)
    assert (trials[S.STATUS] == S.OK).all()
    nodes = set(trials[S.NODE])
    assert len(nodes) == 2, nodes  # each node ran trials
    assert trials[S.NODE].notna().all() and (trials[S.RESOURCE_S] > 0).all()
    meta = json.loads((out / S.METADATA_FILE).read_text())
    assert meta["ray_address"] == address


def test_fractional_gpu_budgets_fit_the_cluster_arithmetic():
    four = Budget(workers=4, cpus_per_worker=1, gpus_per_worker=0.25)
    suite = parse_suite('[[tasks]]\ndataset="digits"\nn=20\nbackbone="small-cnn"\nbatch_size=20\n'
                        '[methods.grid]\n')
    import dataclasses

    fits = dataclasses.replace(suite, budget=four)
    check_resources(fits, {"CPU": 4.0, "GPU": 1.0})  # four trials share one GPU
    with pytest.raises(BenchError, match=r"needs 5 x 0.25 GPUs but the Ray cluster has 1"):
        check_resources(dataclasses.replace(suite, budget=dataclasses.replace(four, workers=5)),
                        {"CPU": 8.0, "GPU": 1.0})
    with pytest.raises(BenchError, match="has no GPU"):
        check_resources(fits, {"CPU": 4.0})
    assert four.unit == "gpu" and four.charge_rate == 0.25  # GPU-seconds: the share held


def test_resource_seconds_count_cpu_and_gpu_apart():
    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    clock = Clock()
    task = Task("digits", 20, "small-cnn", image_size=8)
    from baselines import GridSearch

    campaign = Campaign("s", task, "grid", GridSearch(max_trials=1), 0,
                        Budget(workers=4, cpus_per_worker=2, gpus_per_worker=0.25, cap_s=100),
                        0.0, clock=clock)
    request = campaign.next_request("t1")
    campaign.trial_started("t1")
    clock.now = 10.0
    campaign.trial_complete("t1", FinalResult(S.OK, {S.VAL_NLL: 1.0}, train_s=8.0, eval_s=1.0))
    row = campaign.rows[0]
    assert request.kind == S.SEARCH
    assert row[S.WALL_S] == 10.0 and row[S.CPU_S] == 20.0 and row[S.GPU_S] == 2.5
    assert row[S.RESOURCE_S] == 2.5 and row[S.OVERHEAD_S] == 1.0  # charged in GPU-seconds
    assert campaign.spent_s == 2.5
