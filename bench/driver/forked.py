"""Independent pieces of work spread over forked processes (a one-worker replay's campaigns,
a figure's pages). Forked children inherit what the parent prepared, so nothing large is
pickled; where fork is missing (not Linux or macOS), other threads run (forking them could
deadlock the child) or one process is asked for, the work runs here, in order. Results
come back in the items' order either way."""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator

# what the children inherit: set before the pool forks, cleared after
_INHERITED: dict = {}


def default_jobs() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _call(item):
    return _INHERITED["fn"](item)


def fork_map(fn: Callable, items: list, jobs: int | None = None) -> Iterator:
    """``map(fn, items)`` over ``jobs`` forked processes (default: the cores), lazily, in
    order. ``fn`` may be a closure: the children inherit it rather than unpickle it; the
    items and what ``fn`` returns travel pickled (send indices of anything that won't)."""
    jobs = min(default_jobs() if jobs is None else jobs, len(items))
    # forking a process with other threads running (a Ray driver, say) may deadlock the child
    if jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods() or \
            threading.active_count() > 1:
        yield from map(fn, items)
        return
    outer = _INHERITED.get("fn")  # called inside a child of another fork_map: put back
    _INHERITED["fn"] = fn
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            yield from pool.map(_call, items)
    finally:
        _INHERITED.pop("fn")
        if outer is not None:
            _INHERITED["fn"] = outer
