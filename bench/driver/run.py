"""Running a suite: check everything, start (or join) Ray, run every (task, method, seed)
campaign with the same worker pool and cap, keep the records, then plot and report."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.protocol import BACKENDS, DEFAULT_BACKEND
from bench.driver import ray_processes
from bench.driver.preflight import check_tasks
from bench.driver.campaign import CampaignQueue, without_cut_short
from bench.driver.run_output import (RunView, campaign_plans, check_output_dir, lock_run_dir,
                                     now_stamp, release_run_dir, run_metadata)
from bench.driver.suite import Suite
from bench.records.journal import AT, Journal, read_journal, rewrite_journal
from bench.records.tables import write_json, write_text
from bench.worker.faults import ENV, faults_from_env


class RunStopped(RuntimeError):
    """The suite did not finish; its run directory can be resumed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM: the driver stops as Ctrl-C stops it, and its run directory can be resumed."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def stop_on_sigterm() -> None:
    """SIGTERM raises ``Terminated`` in the main thread. ``ray.init`` installs handlers of
    its own (Ray's lines, exit status 15 or 1, no word of resuming): this runs after it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def check_resources(suite: Suite, cluster: dict[str, float]) -> None:
    """The pool must fit the cluster: an impossible budget is refused before any trial.
    A GPU fraction f packs floor(1 / f) trials on each GPU (Ray's fractional resources),
    so ``workers`` may exceed the GPU count."""
    b = suite.budget
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if b.gpus_per_worker > 0 and gpus == 0:
        raise BenchError(f"budget asks for {b.gpus_per_worker:g} GPU per worker but the "
                         "Ray cluster has no GPU (run where CUDA is, or join a cluster with "
                         "GPUs: --address HOST:PORT)")
    if b.workers * b.cpus_per_worker > cpus + 1e-9:
        raise BenchError(f"budget needs {b.workers} x {b.cpus_per_worker:g} CPUs but the "
                         f"Ray cluster has {cpus:g}")
    if b.gpus_per_worker <= 0:
        return
    if b.gpus_per_worker < 1:  # no trial's share spans two GPUs
        per_gpu = math.floor(1 / b.gpus_per_worker + 1e-9)
        fits = math.floor(gpus + 1e-9) * per_gpu
    else:
        fits = math.floor(gpus / b.gpus_per_worker + 1e-9)
    if b.workers > fits:
        raise BenchError(f"budget needs {b.workers} x {b.gpus_per_worker:g} GPUs but the "
                         f"Ray cluster has {gpus:g} (it fits {fits} trials at "
                         f"{b.gpus_per_worker:g} GPU)")


def local_resources() -> dict[str, float]:
    """What the local Ray this driver starts will offer: every core and CUDA device."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


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
        from ray.exceptions import AuthenticationError

        try:
            ray.init(address=address, **common)
        except ConnectionError as err:  # it answered, but is no Ray cluster (after Ray's retries)
            raise BenchError(f"--address {address}: {err} (no Ray there, or one with token "
                             "authentication: then RAY_AUTH_MODE=token and its head's "
                             "~/.ray/auth_token here)") from None
        except AuthenticationError:  # token mode, no token
            raise BenchError(f"--address {address}: RAY_AUTH_MODE=token but no token here: "
                             "copy the head's ~/.ray/auth_token to this machine (or set "
                             "RAY_AUTH_TOKEN_PATH)") from None
    else:  # this machine only: on loopback, without the dashboard
        with ray_processes.loopback_only():
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=temp_dir,
                     _node_ip_address="127.0.0.1", **common)
    stop_on_sigterm()
    return time.perf_counter() - started


def check_resumable(out: Path, suite: Suite) -> tuple[list[dict], int, dict]:
    """A run directory that ``suite`` may go on in: its journal, whole-line bytes, metadata."""
    from bench.driver.suite import read_toml

    if not (out / S.JOURNAL_FILE).is_file():
        raise BenchError(f"cannot resume {out}: no {S.JOURNAL_FILE} there (not a suite run "
                         "directory)")
    if not (out / S.SUITE_FILE).is_file():
        raise BenchError(f"cannot resume {out}: its {S.SUITE_FILE} is missing (a run "
                         "directory keeps the suite it ran, to check it is the same)")
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
        metadata = None
    if not isinstance(metadata, dict):
        raise BenchError(f"cannot resume {out}: its {S.METADATA_FILE} is missing or "
                         "unreadable")
    if "ended" in metadata:
        raise BenchError(f"cannot resume {out}: that run finished")
    if not os.access(out, os.W_OK):
        raise BenchError(f"cannot resume {out}: not writable")
    events, good = read_journal(out / S.JOURNAL_FILE)
    return events, good, metadata


def run_suite(suite: Suite, out: Path, address: str | None = None,
              progress: bool = True, command: str = "", resume: bool = False,
              backend: str = DEFAULT_BACKEND) -> Path:
    """Run ``suite`` into ``out``; return ``out``. Nothing is written before every check.
    With ``resume``, go on with the run a killed driver left in ``out``: its journal's
    finished trials are kept (and their compute counted), trials it left running run again.
    ``backend``: "actors", a pool of long-lived Ray actors (``bench.driver.ray_pool``), or
    "tune", one Ray Tune experiment (``bench.driver.ray_runner``); both give equal records."""
    import ray

    from bench.worker.trial import TrialSpec

    if backend not in BACKENDS:
        raise BenchError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")

    if suite.replay:  # its trials are recorded runs: bench.driver.replay_suite.run_replay
        raise BenchError(f"suite {suite.name!r} replays records: bench replay SUITE")
    out = Path(out)
    faults = faults_from_env()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not resume:
        check_output_dir(out)
    if address:
        check_address(address)
    if not address and suite.budget.gpus_per_worker > 0:  # the local Ray will have these:
        check_resources(suite, local_resources())  # refused before data sets are fetched
    check_tasks(suite)
    lock = journal = temp_dir = None
    sigterm = signal.getsignal(signal.SIGTERM)  # Ray's and ours replace it: restored after
    try:
        if resume:  # every check that can refuse the resume, before anything is written
            if out.is_dir() and os.access(out, os.W_OK):  # else check_resumable says why not
                lock = lock_run_dir(out)  # the journal is read by the one driver going on
            events, good, metadata = check_resumable(out, suite)
            last_at = events[-1][AT] if events else 0.0
            events = without_cut_short(events)
        else:
            events, good, metadata, last_at = [], None, {}, 0.0
        # suite time goes on from the journal's last event: the gap while dead is not counted
        clock0 = time.perf_counter() - last_at
        view = RunView(suite, out, progress)
        queue = CampaignQueue(view.builders(suite, clock0))  # callbacks once it may write
        if resume:
            queue.restore(events)
        temp_dir = tempfile.mkdtemp(prefix="bench-ray-")  # short: Ray's socket paths are bounded
        ray_start_s = _start_ray(address, temp_dir)
        check_resources(suite, ray.cluster_resources())
        if not resume:
            out.mkdir(parents=True, exist_ok=True)
            lock = lock_run_dir(out)
            check_output_dir(out)  # again, under the lock: another driver may have run here
        reaped = ray_processes.reap(out)  # the Ray a killed driver here left behind
        if not address:
            ray_processes.record(out, temp_dir)
        if resume:
            metadata.setdefault("resumed", []).append(
                {"at": now_stamp(), "suite_s": last_at, "ray_start_s": ray_start_s,
                 "backend": backend})
            # the reports of attempts cut short go: their trials run again from the start
            rewrite_journal(out / S.JOURNAL_FILE, events)
            good = None
        else:
            metadata = run_metadata(suite, command) | {"ray_address": address or "local",
                                                       "ray_start_s": ray_start_s,
                                                       "backend": backend}
            if faults:  # this run's failures were made on purpose
                metadata["injected_faults"] = os.environ[ENV]
        write_json(out / S.METADATA_FILE, metadata)  # first: it marks the directory as a run
        if not resume:
            write_text(out / S.SUITE_FILE, suite.source)
        if reaped["stopped"] or reaped["removed"]:
            view.progress.say(f"cleaned up after the killed driver: {len(reaped['stopped'])} "
                              f"Ray processes stopped, {reaped['removed'] or 'no directory'} "
                              "removed")
        threads = max(1, int(suite.budget.cpus_per_worker))
        specs = [TrialSpec(task, seed, spec.build(), threads, suite.budget.gpus_per_worker)
                 for task, seed, spec in campaign_plans(suite)]

        def done(campaign) -> None:  # the journal has every event; the tables follow
            if not address:  # workers Ray started since
                ray_processes.record(out, temp_dir)
            view.done(campaign)

        journal = Journal(out / S.JOURNAL_FILE, lambda: time.perf_counter() - clock0, good)
        queue.on_start, queue.on_done, queue.log = view.started, done, journal
        if resume:
            queue.restored()
            view.write_trials(force=True)
            view.write_reports(force=True)
            kept = sum(e["event"] == "complete" for e in events)
            again = sum(len(c.rerun) for _, c in queue.active)
            view.progress.say(f"resuming {out}: {kept} finished trials kept, {again} cut "
                              "short run again")
        if backend == "tune":
            from bench.driver.ray_runner import run_campaigns

            run_campaigns(queue, specs, suite.budget, os.path.join(temp_dir, "tune"), faults)
        else:
            from bench.driver.ray_pool import run_campaigns

            run_campaigns(queue, specs, suite.budget, faults)
        if not queue.finished:
            raise RunStopped(f"Ray stopped before the suite finished; {out} can be resumed")
        metadata |= {"ended": now_stamp(),
                     "suite_wall_s": time.perf_counter() - clock0}
        write_json(out / S.METADATA_FILE, metadata)
    finally:
        if journal is not None:
            journal.close()
        if ray.is_initialized():
            ray.shutdown()
        if threading.current_thread() is threading.main_thread() and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        if lock is not None:  # under the lock: the next driver must not see our record
            ray_processes.forget(out)
            release_run_dir(lock)
    return out
