"""Running a replay suite (``bench replay``): its search methods on recorded runs, in
simulated time (``bench.driver.replay.simulate``), into a run directory like ``bench run``'s, with
the same metadata, progress lines and live tables (``bench.driver.run_output``).

A replay suite is a suite with a ``records`` field: ``bench.driver.suite`` reads both kinds (its
docstring shows the replay keys) and ``bench.driver.suite_records`` checks one against its
records. E.g. ``suites/replay-cifar10-resnet50.toml``:

    name = "replay-cifar10-resnet50"
    records = "published:cifar10-resnet50-v1"
    seeds = [1001, 2001, 3001]               # the records' seeds

    [budget]
    workers = 1
    gpus_per_worker = 1                      # recorded runs held one A100 each:
    unit = "gpu"                             # A100 GPU-seconds = runtime (the default here)
    cap_s = 1e12

    [[tasks]]
    name = "cifar10-resnet50-v1-N100"        # a task of the records
    cap_s = 40000                            # optional

    [methods.grid]
    [methods.random]
    trials = 24
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.driver.campaign import CampaignQueue
from bench.driver.replay import SimulatedClock, simulate
from bench.driver.forked import default_jobs, fork_map
from bench.driver.replay_parallel import simulate_each
from bench.driver.run_output import (Progress, RunView, check_output_dir, lock_run_dir,
                                     now_stamp, release_run_dir, run_metadata)
from bench.driver.suite import NOT_REPLAY, Suite, parse_suite
from bench.driver.suite_records import is_published
from bench.records.published import COMPUTE_UNIT, published_bo, record_set
from bench.records.recorded import SEPARATOR, load_recorded
from bench.records.tables import frame, write_json, write_table, write_text

# a replay rewrites its live trials and reports tables at most this often: each rewrite
# copies every row so far (a suite's replay writes 400,000 report rows)
LIVE_TABLE_S = 30.0


def parse_replay_suite(text: str, origin: str = "replay suite") -> Suite:
    """``bench.driver.suite.parse_suite``, refusing a suite that names no records."""
    return parse_suite(text, origin, replay_only=True)


def run_replay(suite: Suite, out: Path, progress: bool = True, command: str = "",
               stages: dict | None = None, jobs: int | None = None,
               meanwhile: Callable[[], None] | None = None) -> Path:
    """Replay ``suite`` into ``out`` (records, metadata), as ``bench.driver.run.run_suite`` runs a
    live one: the same metadata, progress lines and live tables. ``stages``, if given,
    receives the seconds spent loading the records, simulating and writing the tables.
    With one worker the campaigns are simulated each alone, in ``jobs`` processes (default:
    the cores; ``bench.driver.replay_parallel``): the records do not depend on ``jobs``.
    ``meanwhile`` is called once, when the first campaign's result is in, while other
    processes simulate the rest (what comes after the replay, made ready on a core that
    would wait)."""
    if not suite.replay:
        raise BenchError(NOT_REPLAY.format(origin=f"suite {suite.name!r}"))
    stages = {} if stages is None else stages
    records = suite.records
    out = Path(out)
    check_output_dir(out, resumable=False)
    loading = time.perf_counter()
    recorded = load_recorded(records.name, records.method)
    started = time.perf_counter()
    stages["load_s"] = started - loading
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(out)  # as a live run's: two drivers never mix their files
    try:
        check_output_dir(out, resumable=False)  # again, under the lock
        published = is_published(records)
        metadata = {**(COMPUTE_UNIT if published else {}), **run_metadata(suite, command),
                    "backend": "replay", "records": records.name,
                    **({"records_method": records.method} if records.method else {})}
        write_json(out / S.METADATA_FILE, metadata)  # first: it marks the directory as a run
        write_text(out / S.SUITE_FILE, suite.source)
        # what is alive now (the records) lives to the end: Python's collector need not
        # scan it again and again while the methods make their many small objects
        gc.collect()
        gc.freeze()
        try:
            if suite.budget.workers == 1:
                rows, reports, simulated_s = _one_worker(suite, recorded, out, progress, jobs,
                                                         meanwhile)
            else:  # campaigns overlap on the shared pool: simulated together
                clock = SimulatedClock()
                view = RunView(suite, out, progress, every_s=LIVE_TABLE_S)
                queue = CampaignQueue(view.builders(suite, clock=clock, discrete=True),
                                      view.started, view.done)
                simulate(queue, recorded, suite.budget.workers, clock)
                rows = [r for c in view.campaigns for r in c.rows]
                reports = [r for c in view.campaigns for r in c.reports]
                simulated_s = clock.now
        finally:
            gc.unfreeze()
        stages["simulate_s"] = time.perf_counter() - started
        if published:  # each recorded run held one A100 (unit "gpu"); its CPU time unknown
            rows = [{**r, S.CPU_S: None, S.GPU_S: r[S.WALL_S]} for r in rows]

        def write(table: str) -> None:  # the two tables side by side where cores allow
            if table == S.REPORTS_FILE:
                write_table(out / table, frame(reports, S.REPORT_COLUMNS))
            else:
                write_table(out / table, _with_bo(frame(rows, S.TRIAL_COLUMNS), suite))
        list(fork_map(write, [S.REPORTS_FILE, S.TRIALS_FILE]))
        write_json(out / S.METADATA_FILE, metadata | {
            "ended": now_stamp(), "simulated_s": simulated_s,
            "replay_wall_s": time.perf_counter() - started})
        stages["write_s"] = time.perf_counter() - started - stages["simulate_s"]
        stages["trials"] = len(rows)  # simulated here (published BO traces are not)
    finally:
        release_run_dir(lock)
    return out


def _with_bo(trials: pd.DataFrame, suite: Suite) -> pd.DataFrame:
    """The trials, and the published BO traces of the suite's tasks and seeds where its
    records have them (recorded traces, not a plugin run here)."""
    records = suite.records
    if not records.bo:
        return trials
    bo = pd.concat([published_bo(r) for r in records.name.split(SEPARATOR)
                    if record_set(r).bo], ignore_index=True)
    names = {t.name for t in suite.tasks}
    bo = bo[bo[S.TASK].isin(names) & (bo[S.SEED] // 100).isin(suite.seeds)]
    return pd.concat([trials, bo.assign(**{S.SUITE: suite.name, S.PLUGIN: "published:bo"})],
                     ignore_index=True)


def _one_worker(suite: Suite, recorded, out: Path, progress: bool, jobs: int | None,
                meanwhile: Callable[[], None] | None):
    """A one-worker replay, campaign by campaign (``replay_parallel``): one progress line
    per campaign, the trials table rewritten at most every ``LIVE_TABLE_S``."""
    lines = Progress(suite, progress)
    rows: list[dict] = []
    written = time.perf_counter()

    def on_done(run, summary) -> None:
        nonlocal written, meanwhile
        if meanwhile is not None:
            meanwhile, call = None, meanwhile
            call()
        rows.extend(run.rows)
        lines.done(summary)
        if time.perf_counter() - written >= LIVE_TABLE_S:
            write_table(out / S.TRIALS_FILE, frame(rows, S.TRIAL_COLUMNS))
            written = time.perf_counter()

    runs, simulated_s = simulate_each(suite, recorded, jobs or default_jobs(), on_done)
    return rows, [r for run in runs for r in run.reports], simulated_s
