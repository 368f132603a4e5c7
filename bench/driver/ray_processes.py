"""The local Ray a driver starts, recorded in its run directory so that a later driver can
clean up after one that was killed: Ray's helper processes (GCS server, raylet, log
monitor, and through the raylet its workers) outlive a SIGKILLed driver for minutes, and
its temporary directory stays.

``record`` writes the driver's id, Ray's temporary directory and every process the driver
started (id and kernel start time, so a reused id is never mistaken for one of them).
``reap`` stops what is still alive of a recorded run, with its descendants, and removes
the directory; it is called only by a driver holding the run directory's lock, so the
recorded driver is dead. Linux only (``/proc``); elsewhere it does nothing.
``loopback_only`` keeps that Ray off the network while it starts.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from bench.contract import schema as S
from bench.records.tables import write_json

TEMP_PREFIX = "bench-ray-"  # the only temporary directories reap removes
# Ray's own switch for a single-machine Ray on loopback (its default on Windows and macOS)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def loopback_only():
    """While a local Ray starts: its node address is loopback, so the GCS server, raylet,
    agents and workers listen on 127.0.0.1 only (by default Ray listens on every interface,
    and anyone who can reach the machine could run work as this user). ``ray.init`` turns
    ``_node_ip_address="127.0.0.1"`` into the machine's outward address, except where Ray
    clusters are switched off: in this process (Ray read the variable when imported) and in
    the processes ``ray.init`` starts (they read it from the environment). Restored after,
    so that nothing started later (a ``ray start`` node) inherits it."""
    import ray._private.ray_constants as constants

    saved_env, saved = os.environ.get(LOOPBACK_ENV), constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV], constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved_env


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent id, start time in clock ticks since boot) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return int(fields[1]), int(fields[19])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            tree.setdefault(stat[0], []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def ray_pids() -> list[int]:
    """The processes of the local Ray this driver started (GCS server, raylet, ...)."""
    import ray._private.worker as worker

    node = getattr(worker, "_global_node", None)
    try:
        return [proc.pid for _, proc in node.live_processes()] if node is not None else []
    except AttributeError:  # another Ray version: its internals moved
        return []


def record(out: Path, temp_dir: str) -> None:
    """Note this driver's local Ray in ``out``: its processes and theirs (the raylet's
    agents and workers: these outlive a killed driver, while the processes the driver
    started die with it). Called again as the run goes, for workers started since."""
    pids = ray_pids()
    pids += [child for pid in pids for child in descendants(pid)]
    processes = [{"pid": pid, "start": stat[1]} for pid in dict.fromkeys(pids)
                 if (stat := _stat(pid)) is not None]
    write_json(out / S.RAY_FILE, {"host": platform.node(), "driver_pid": os.getpid(),
                                  "temp_dir": temp_dir, "processes": processes})


def forget(out: Path) -> None:
    """The driver stopped its Ray itself: nothing to clean up."""
    (out / S.RAY_FILE).unlink(missing_ok=True)


def reap(out: Path, grace_s: float = 3.0) -> dict:
    """Stop the recorded processes of a dead driver's Ray that still live (and their
    descendants), remove its temporary directory and the record. Returns what was done."""
    path = out / S.RAY_FILE
    try:
        recorded = json.loads(path.read_text())
        processes = [(int(p["pid"]), int(p["start"])) for p in recorded.get("processes", [])]
        temp_dir = str(recorded.get("temp_dir") or "")
    except FileNotFoundError:
        return {"stopped": [], "removed": None}
    except (OSError, ValueError, TypeError, KeyError):  # torn or foreign: only drop it
        path.unlink(missing_ok=True)
        return {"stopped": [], "removed": None}
    if recorded.get("host") != platform.node():  # ids of another machine name nothing here
        path.unlink(missing_ok=True)
        return {"stopped": [], "removed": None}
    alive = [pid for pid, start in processes if (_stat(pid) or (0, -1))[1] == start]
    targets = list(dict.fromkeys(alive + [d for pid in alive for d in descendants(pid)]))
    targets = [pid for pid in targets if pid != os.getpid()]
    _signal(targets, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_stat(pid) for pid in targets):
        time.sleep(0.1)
    _signal([pid for pid in targets if _stat(pid)], signal.SIGKILL)
    removed = None
    temp = Path(temp_dir)
    if temp.name.startswith(TEMP_PREFIX) and temp.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(temp, ignore_errors=True)
        removed = str(temp)
    path.unlink(missing_ok=True)
    return {"stopped": targets, "removed": removed}


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
