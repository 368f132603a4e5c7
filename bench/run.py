"""Running a suite: check everything, start (or join) Ray, run every (task, method, seed)
campaign with the same worker pool and cap, keep the records, then plot and report."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench import ray_processes
from bench import schema as S
from bench.errors import BenchError
from bench.faults import ENV, faults_from_env
from bench.preflight import check_tasks
from bench.journal import AT, Journal, read_journal
from bench.records import frame, write_json, write_table, write_text
from bench.suite import Suite


class RunStopped(RuntimeError):
    """The suite did not finish; its run directory can be resumed."""


def check_output_dir(out: Path) -> None:
    """Refuse an output that is a file, is not writable, or already holds a run."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"output {out} exists and is not a directory")
    if (out / S.TRIALS_FILE).exists() or (out / S.JOURNAL_FILE).exists():
        raise BenchError(f"output {out} already holds a run; choose another directory, or "
                         "go on with it: bench run SUITE --resume DIR")
    parent = out if out.exists() else next(p for p in out.parents if p.exists())
    try:  # try it: permission bits say nothing to root or of a read-only file system
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError:  # the error's own words (e.g. "No such file" in /proc) mislead
        raise BenchError(f"output {out} is not writable: cannot create a file in "
                         f"{parent}") from None


def check_resources(suite: Suite, cluster: dict[str, float]) -> None:
    """The pool must fit the cluster: an impossible budget is refused before any trial."""
    b = suite.budget
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if b.gpus_per_worker > 0 and gpus == 0:
        raise BenchError(f"budget asks for {b.gpus_per_worker:g} GPU per worker but the "
                         "Ray cluster has no GPU")
    if b.workers * b.cpus_per_worker > cpus + 1e-9:
        raise BenchError(f"budget needs {b.workers} x {b.cpus_per_worker:g} CPUs but the "
                         f"Ray cluster has {cpus:g}")
    if b.workers * b.gpus_per_worker > gpus + 1e-9:
        raise BenchError(f"budget needs {b.workers} x {b.gpus_per_worker:g} GPUs but the "
                         f"Ray cluster has {gpus:g}")


def _commit() -> str | None:
    """The harness's git commit (``+dirty`` with local changes), if it runs from a clone."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "bench", "baselines", "methods"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "harness_commit": _commit()}
    for dist in ("finetune-hpo-bench", "torch", "torchvision", "ray", "optuna", "laplace-torch",
                 "pandas", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _machine() -> dict:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"hostname": platform.node(), "platform": platform.platform(),
            "processor": platform.machine(), "cpus": os.cpu_count(),
            "memory_gib": round(mem, 1)}


class Progress:
    """One line per finished trial on stderr: where the suite is and the best so far."""

    def __init__(self, suite: Suite, enabled: bool) -> None:
        self.enabled = enabled
        self.total = len(suite.tasks) * len(suite.methods) * len(suite.seeds)
        self.index = 0
        self.started = time.perf_counter()

    def campaign(self, campaign) -> None:
        self.index += 1
        campaign.number = self.index
        self.say(f"[{self.index}/{self.total}] {campaign.task.name} | {campaign.label} | "
                  f"seed {campaign.seed}: start")

    def done(self, campaign) -> None:
        tuning = [r for r in campaign.rows if r[S.KIND] != S.RETRAIN]
        self.say(f"[{campaign.number}/{self.total}] {campaign.task.name} | {campaign.label} | "
                  f"seed {campaign.seed}: done, {len(tuning)} trials, "
                  f"{campaign.spent_s:.0f}/{campaign.cap_s:.0f} resource-s")

    def record(self, campaign, row: dict) -> None:
        tuning = [r for r in campaign.rows if r[S.KIND] != S.RETRAIN]
        best = f"{campaign.best[0]:.4f}" if campaign.best else "-"
        score = row.get(S.VAL_NLL) if row[S.KIND] == S.SEARCH else row.get(S.TEST_ACC)
        what = f"{row[S.KIND]} {row[S.STATUS]}" + (f" {score:.4f}" if score is not None else "")
        if row[S.STATUS] == S.FAILED:
            what += f" ({(row.get(S.ERROR) or '?')[:80]})"
        self.say(f"[{campaign.number}/{self.total}] {campaign.task.name} | {campaign.label} | "
                  f"seed {campaign.seed}: {what} | {len(tuning)} trials, "
                  f"{campaign.spent_s:.0f}/{campaign.cap_s:.0f} resource-s | "
                  f"best val_nll {best} | {time.perf_counter() - self.started:.0f} s elapsed")

    def say(self, line: str) -> None:
        if self.enabled:
            print(line, file=sys.stderr, flush=True)


ADDRESS_TIMEOUT_S = 5.0


def check_address(address: str) -> None:
    """A cluster address must answer: ``ray.init`` would otherwise retry for minutes.
    ``auto`` (the cluster this machine belongs to) is left to Ray."""
    import socket

    if address == "auto":
        return
    host, sep, port = address.split("://")[-1].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BenchError(f"--address {address!r}: expected HOST:PORT, e.g. 10.0.0.1:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise BenchError(f"--address {address}: no Ray cluster answers there within "
                         f"{ADDRESS_TIMEOUT_S:g} s ({reason})") from None


def _start_ray(address: str | None, temp_dir: str) -> float:
    import ray

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ctrl-C raises KeyboardInterrupt at once, as SIGKILL would stop the driver: the journal
    # then holds exactly the finished trials (Tune's own handler would end running trials
    # as if they had finished)
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    started = time.perf_counter()
    common = dict(logging_level="ERROR", log_to_driver=False, configure_logging=True)
    if address:
        try:
            ray.init(address=address, **common)
        except ConnectionError as err:  # it answered, but is no Ray cluster (after Ray's retries)
            raise BenchError(f"--address {address}: {err}") from None
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=temp_dir,
                 **common)
    return time.perf_counter() - started


def check_resumable(out: Path, suite: Suite) -> tuple[list[dict], int, dict]:
    """A run directory that ``suite`` may go on in: its journal, whole-line bytes, metadata."""
    from bench.suite import read_toml

    if not (out / S.JOURNAL_FILE).is_file() or not (out / S.SUITE_FILE).is_file():
        raise BenchError(f"cannot resume {out}: no {S.JOURNAL_FILE} there (not a suite run "
                         "directory)")
    try:
        recorded = (out / S.SUITE_FILE).read_text()
    except (OSError, UnicodeDecodeError):
        raise BenchError(f"cannot resume {out}: its {S.SUITE_FILE} is unreadable") from None
    if read_toml(recorded, f"cannot resume {out}: its {S.SUITE_FILE}") != \
            read_toml(suite.source, suite.name):
        raise BenchError(f"cannot resume {out}: it ran a different suite than {suite.name!r}")
    try:
        metadata = json.loads((out / S.METADATA_FILE).read_text())
    except (OSError, ValueError):
        raise BenchError(f"cannot resume {out}: its {S.METADATA_FILE} is missing or "
                         "unreadable") from None
    if "ended" in metadata:
        raise BenchError(f"cannot resume {out}: that run finished")
    if not os.access(out, os.W_OK):
        raise BenchError(f"cannot resume {out}: not writable")
    events, good = read_journal(out / S.JOURNAL_FILE)
    return events, good, metadata


def _lock(out: Path):
    """Only one driver writes into a run directory; the kernel frees the lock if it dies."""
    from filelock import FileLock, Timeout

    lock = FileLock(out / S.LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise BenchError(f"{out} is in use by another bench run") from None
    return lock


def run_suite(suite: Suite, out: Path, address: str | None = None,
              progress: bool = True, command: str = "", resume: bool = False) -> Path:
    """Run ``suite`` into ``out``; return ``out``. Nothing is written before every check.
    With ``resume``, go on with the run a killed driver left in ``out``: its journal's
    finished trials are kept (and their compute counted), trials it left running run again."""
    import ray

    from bench.campaign import Campaign
    from bench.ray_runner import CampaignQueue, run_campaigns
    from bench.trial import TrialSpec

    out = Path(out)
    faults = faults_from_env()
    if resume:
        events, good, metadata = check_resumable(out, suite)
    else:
        check_output_dir(out)
        events, good, metadata = [], None, {}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_address(address)
    check_tasks(suite)
    temp_dir = tempfile.mkdtemp(prefix="bench-ray-")  # short: Ray's socket paths are bounded
    # suite time goes on from the journal's last event: the gap while dead is not counted
    clock0 = time.perf_counter() - (events[-1][AT] if events else 0.0)
    lock = journal = None
    try:
        ray_start_s = _start_ray(address, temp_dir)
        check_resources(suite, ray.cluster_resources())
        out.mkdir(parents=True, exist_ok=True)
        lock = _lock(out)
        reaped = ray_processes.reap(out)  # the Ray a killed driver here left behind
        if not address:
            ray_processes.record(out, temp_dir)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if resume:
            metadata.setdefault("resumed", []).append(
                {"at": stamp, "suite_s": events[-1][AT] if events else 0.0,
                 "ray_start_s": ray_start_s})
        else:
            write_text(out / S.SUITE_FILE, suite.source)
            metadata = {"suite": suite.name, "command": command or " ".join(sys.argv),
                        "versions": _versions(), "machine": _machine(),
                        "budget": dataclasses.asdict(suite.budget), "seeds": list(suite.seeds),
                        "ray_address": address or "local", "ray_start_s": ray_start_s,
                        "started": stamp, S.REFERENCE: suite.reference,
                        "tasks": [task.name for task in suite.tasks]}
            if faults:  # this run's failures were made on purpose
                metadata["injected_faults"] = os.environ[ENV]
        write_json(out / S.METADATA_FILE, metadata)
        show = Progress(suite, progress)
        if reaped["stopped"] or reaped["removed"]:
            show.say(f"cleaned up after the killed driver: {len(reaped['stopped'])} Ray "
                     f"processes stopped, {reaped['removed'] or 'no directory'} removed")
        plans = [(task, seed, spec) for task in suite.tasks for seed in suite.seeds
                 for spec in suite.methods]
        threads = max(1, int(suite.budget.cpus_per_worker))
        specs = [TrialSpec(task, seed, spec.build(), threads, suite.budget.gpus_per_worker)
                 for task, seed, spec in plans]
        started: list = []  # campaigns in the order they started

        def make(task, seed, spec):
            def build():
                started.append(Campaign(suite.name, task, spec.label, spec.build(), seed,
                                        suite.budget, clock0, on_record=record,
                                        plugin=spec.plugin))
                return started[-1]
            return build

        def write_trials() -> None:
            write_table(out / S.TRIALS_FILE,
                        frame([r for c in started for r in c.rows], S.TRIAL_COLUMNS))

        def record(campaign, row: dict) -> None:  # trials after every trial: a live table
            show.record(campaign, row)
            write_trials()

        def done(campaign) -> None:  # reports after every campaign; the journal every event
            show.done(campaign)
            if not address:  # workers Ray started since
                ray_processes.record(out, temp_dir)
            write_trials()
            write_table(out / S.REPORTS_FILE,
                        frame([r for c in started for r in c.reports], S.REPORT_COLUMNS))

        journal = Journal(out / S.JOURNAL_FILE, lambda: time.perf_counter() - clock0, good)
        queue = CampaignQueue([make(*plan) for plan in plans], show.campaign, done, log=journal)
        if resume:
            queue.resume(events)
            kept = sum(e["event"] == "complete" for e in events)
            again = sum(len(c.rerun) for _, c in queue.active)
            show.say(f"resuming {out}: {kept} finished trials kept, {again} cut short run again")
        run_campaigns(queue, specs, suite.budget, os.path.join(temp_dir, "tune"), faults)
        if not queue.finished:
            raise RunStopped(f"Ray Tune stopped before the suite finished; {out} can be "
                             "resumed")
        metadata |= {"ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "suite_wall_s": time.perf_counter() - clock0}
        write_json(out / S.METADATA_FILE, metadata)
    finally:
        if journal is not None:
            journal.close()
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if lock is not None:  # under the lock: the next driver must not see our record
            ray_processes.forget(out)
            lock.release()
            Path(lock.lock_file).unlink(missing_ok=True)  # a dead driver's stays: harmless
    return out


def summarize(out: Path) -> tuple[list[Path], str]:
    """Plot and report a finished run directory."""
    from bench.report import report_run
    from bench.plots import plot_run

    paths = plot_run(out)
    return paths, report_run(out)
