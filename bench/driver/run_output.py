"""What every suite run writes and shows, live (``bench.driver.run``) or replayed
(``bench.driver.replay_suite``): the output check, the metadata it starts with, one progress line
per trial, and the trials and reports tables rewritten as campaigns go. Both drivers use
these, so a run directory reads the same whichever backend filled it."""

from __future__ import annotations

import dataclasses
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


def check_output_dir(out: Path, resumable: bool = True) -> None:
    """Refuse an output that is a file, is not writable, or already holds a run."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"output {out} exists and is not a directory")
    if (out / S.TRIALS_FILE).exists() or (out / S.JOURNAL_FILE).exists():
        raise BenchError(f"output {out} already holds a run; choose another directory"
                         + (", or go on with it: bench run SUITE --resume DIR"
                            if resumable else ""))
    parent = out if out.exists() else next(p for p in out.parents if p.exists())
    try:  # try it: permission bits say nothing to root or of a read-only file system
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError:  # the error's own words (e.g. "No such file" in /proc) mislead
        raise BenchError(f"output {out} is not writable: cannot create a file in "
                         f"{parent}") from None


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
    return {"suite": suite.name, "command": command or " ".join(sys.argv),
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


class RunView:
    """A run as it goes: progress lines, and the trials table after every trial and the
    reports table after every campaign, from the campaigns started so far, so ``bench
    status`` and readers of the tables see a live run. ``every_s`` spaces the rewrites
    out (each copies every row; a replay finishes trials faster than it could write)."""

    def __init__(self, suite: Suite, out: Path, progress: bool, every_s: float = 0.0) -> None:
        self.out, self.every_s = Path(out), every_s
        self.progress = Progress(suite, progress)
        self.campaigns: list = []  # in the order they started
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
