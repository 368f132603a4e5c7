"""What every suite run writes and shows, live (``bench.driver.run``) or replayed
(``bench.driver.replay_suite``): the output check, the metadata it starts with, one progress line
per trial, and the trials and reports tables rewritten as campaigns go. Both drivers use
these, so a run directory reads the same whichever backend filled it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.driver.suite import Suite
from bench.records.tables import frame, write_table


HARNESS_KEY, HARNESS = "harness", "finetune-hpo-bench"  # metadata.json's mark of a run here
DRIVER_FILES = (S.LOCK_FILE, S.RAY_FILE)  # a driver writes these before its metadata
# written first, atomically: a driver killed meanwhile leaves ".<name>.*" temporary files
STARTING_FILES = (S.METADATA_FILE, S.SUITE_FILE)


def holds_harness_run(out: Path) -> bool:
    """Whether ``out`` is this harness's run directory: its metadata.json carries the mark
    (or, written before the mark, names the harness's commit among its versions)."""
    try:
        metadata = json.loads((out / S.METADATA_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(metadata, dict):
        return False
    versions = metadata.get("versions")
    return metadata.get(HARNESS_KEY) == HARNESS or (
        isinstance(versions, dict) and "harness_commit" in versions)


def foreign_files(out: Path) -> list[str]:
    """What a directory holds that no driver of this harness wrote as it started (empty for
    a missing or empty directory, or one a driver started in and left at once)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name not in DRIVER_FILES and
                  not any(p.name.startswith(f".{name}.") for name in STARTING_FILES))


def check_output_dir(out: Path, resumable: bool = True) -> None:
    """Refuse an output that is a file, is not writable, already holds a run, or is a
    directory of other files: a run never replaces a file it did not write."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"output {out} exists and is not a directory")
    if (out / S.TRIALS_FILE).exists() or (out / S.JOURNAL_FILE).exists():
        raise BenchError(f"output {out} already holds a run; choose another directory"
                         + (", or go on with it: bench run SUITE --resume DIR"
                            if resumable else ""))
    foreign = foreign_files(out)
    if foreign and not holds_harness_run(out):
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4
                                          else "")
        raise BenchError(f"output {out} is a directory of other files ({shown}) that holds "
                         "no bench run; choose a new or empty directory")
    parent = out if out.exists() else next(p for p in out.parents if p.exists())
    try:  # try it: permission bits say nothing to root or of a read-only file system
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError:  # the error's own words (e.g. "No such file" in /proc) mislead
        raise BenchError(f"output {out} is not writable: cannot create a file in "
                         f"{parent}") from None


def lock_run_dir(out: Path):
    """Only one driver (live run, resume or replay) writes into a run directory; the
    kernel frees the lock if it dies. Release with ``release_run_dir``."""
    from filelock import FileLock, Timeout

    lock = FileLock(out / S.LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise BenchError(f"{out} is in use by another bench run") from None
    return lock


def release_run_dir(lock) -> None:
    lock.release()
    Path(lock.lock_file).unlink(missing_ok=True)  # a dead driver's stays: harmless


def _commit() -> str | None:
    """The harness's git commit (``+dirty`` with local changes), if it runs from a clone."""
    import subprocess

    root = Path(__file__).resolve().parents[2]  # bench/driver/ -> the clone
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


def now_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_metadata(suite: Suite, command: str = "") -> dict:
    """What metadata.json says of every run when it starts; "ended" is added when it ends
    (without it, the run stopped early)."""
    return {HARNESS_KEY: HARNESS, "suite": suite.name,
            "command": command or " ".join(sys.argv),
            "versions": _versions(), "machine": _machine(),
            "budget": dataclasses.asdict(suite.budget), "seeds": list(suite.seeds),
            "started": now_stamp(), S.REFERENCE: suite.reference,
            "tasks": [task.name for task in suite.tasks]}


def campaign_plans(suite: Suite) -> list[tuple]:
    """(task, seed, method) of every campaign, in the order they start."""
    return [(task, seed, spec) for task in suite.tasks for seed in suite.seeds
            for spec in suite.methods]


class Progress:
    """One line per finished trial on stderr: where the suite is and the best so far."""

    def __init__(self, suite: Suite, enabled: bool) -> None:
        self.enabled = enabled
        self.total = len(suite.tasks) * len(suite.methods) * len(suite.seeds)
        self.started = time.perf_counter()

    def where(self, campaign) -> str:
        return (f"[{campaign.index + 1}/{self.total}] {campaign.task.name} | "
                f"{campaign.label} | seed {campaign.seed}")

    def campaign(self, campaign) -> None:
        self.say(f"{self.where(campaign)}: start")

    def done(self, campaign) -> None:
        tuning = [r for r in campaign.rows if r[S.KIND] != S.RETRAIN]
        self.say(f"{self.where(campaign)}: done, {len(tuning)} trials, "
                 f"{campaign.spent_s:.0f}/{campaign.cap_s:.0f} {campaign.budget.unit_label}")

    def record(self, campaign, row: dict) -> None:
        tuning = [r for r in campaign.rows if r[S.KIND] != S.RETRAIN]
        best = f"{campaign.best[0]:.4f}" if campaign.best else "-"
        score = row.get(S.VAL_NLL) if row[S.KIND] == S.SEARCH else row.get(S.TEST_ACC)
        what = f"{row[S.KIND]} {row[S.STATUS]}" + (f" {score:.4f}" if score is not None else "")
        if row[S.STATUS] == S.FAILED:
            what += f" ({(row.get(S.ERROR) or '?')[:80]})"
        self.say(f"{self.where(campaign)}: {what} | {len(tuning)} trials, "
                 f"{campaign.spent_s:.0f}/{campaign.cap_s:.0f} {campaign.budget.unit_label} | "
                 f"best val_nll {best} | {time.perf_counter() - self.started:.0f} s elapsed")

    def say(self, line: str) -> None:
        if self.enabled:
            print(line, file=sys.stderr, flush=True)


def progress_for(suite: Suite, enabled: bool, campaigns: list, out: Path):
    """What shows a run's progress: a live display where stderr is a terminal, else one line
    per trial; nothing when not ``enabled`` (``--quiet``). Both are told the same events of
    the ``campaigns`` the driver starts; neither changes the records."""
    from bench.driver import live_display

    console = live_display.terminal_console() if enabled else None
    if console is None:
        return Progress(suite, enabled)
    return live_display.LiveDisplay(suite, campaigns, console, out / S.JOURNAL_FILE)


class RunView:
    """A run as it goes: progress lines, and the trials table after every trial and the
    reports table after every campaign, from the campaigns started so far, so ``bench
    status`` and readers of the tables see a live run. ``every_s`` spaces the rewrites
    out (each copies every row; a replay finishes trials faster than it could write)."""

    def __init__(self, suite: Suite, out: Path, progress: bool, every_s: float = 0.0) -> None:
        self.out, self.every_s = Path(out), every_s
        self.campaigns: list = []  # in the order they started
        self.progress = progress_for(suite, progress, self.campaigns, self.out)
        self._written = {S.TRIALS_FILE: -math.inf, S.REPORTS_FILE: -math.inf}

    def builders(self, suite: Suite, clock0: float = 0.0, **campaign_options) -> list:
        """A ``CampaignQueue`` plan: one builder per campaign, in ``campaign_plans``
        order, of a ``Campaign`` that reports its trials here."""
        from bench.driver.campaign import Campaign

        def builder(task, seed, spec):
            def build():
                self.campaigns.append(Campaign(
                    suite.name, task, spec.label, spec.build(), seed, suite.budget, clock0,
                    on_record=self.record, plugin=spec.plugin, **campaign_options))
                return self.campaigns[-1]
            return build
        return [builder(*plan) for plan in campaign_plans(suite)]

    def started(self, campaign) -> None:
        self.progress.campaign(campaign)

    def record(self, campaign, row: dict) -> None:
        self.progress.record(campaign, row)
        self.write_trials()

    def done(self, campaign) -> None:
        self.progress.done(campaign)
        self.write_trials()
        self.write_reports()

    def write_trials(self, force: bool = False) -> None:
        if force or self._due(S.TRIALS_FILE):
            self._write(S.TRIALS_FILE, [r for c in self.campaigns for r in c.rows],
                        S.TRIAL_COLUMNS)

    def write_reports(self, force: bool = False) -> None:
        if force or self._due(S.REPORTS_FILE):
            self._write(S.REPORTS_FILE, [r for c in self.campaigns for r in c.reports],
                        S.REPORT_COLUMNS)

    def _due(self, table: str) -> bool:
        return time.perf_counter() - self._written[table] >= self.every_s

    def _write(self, table: str, rows: list[dict], columns) -> None:
        write_table(self.out / table, frame(rows, columns))
        self._written[table] = time.perf_counter()  # the next one every_s after this ends
