"""One view of several run directories: ``bench report DIR DIR...`` and ``bench plot DIR
DIR...`` read them as one run (e.g. the learned methods run live and the search methods
replayed on the grid's records), so every method of a task stands on one axis.

Directories merge only if they hold the same tasks and seeds and count compute in the same
unit; otherwise one line says which differs. Every method is compared with the first
directory's reference (e.g. MARS-SP's own grid read against default's L2-SP grid); the note
says where another directory named another. A method label found in several directories is
taken from the first that has it (a replayed grid repeats the live grid it replays):
``MergedRun.repeated`` names what was left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.contract.errors import BenchError
from bench.contract.schema import METHOD, SEED, TASK
from bench.records.rundir import RunInfo, load_run
from bench.records.tables import check_writable, read_reports


@dataclass(frozen=True)
class MergedRun:
    trials: pd.DataFrame
    info: RunInfo
    reports: pd.DataFrame
    run_dirs: tuple[str, ...]
    repeated: dict[str, list[str]] = field(default_factory=dict)  # label -> dirs left out
    other_references: dict[str, str] = field(default_factory=dict)  # dir -> its reference


def _names(values) -> str:
    shown = sorted(map(str, values))
    return ", ".join(shown[:4]) + (f" and {len(shown) - 4} more" if len(shown) > 4 else "")


def _differ(command: str, first, other, what: str, a, b) -> BenchError:
    """Sets of values: what only one of them has; single values: both."""
    if isinstance(a, set):
        only_a, only_b = a - b, b - a
        detail = "; ".join(x for x in (only_a and f"only {first} has {_names(only_a)}",
                                       only_b and f"only {other} has {_names(only_b)}") if x)
    else:
        detail = f"{first}: {a}, {other}: {b}"
    return BenchError(f"{command}: {first} and {other} hold different {what} ({detail}); "
                      "merge runs of the same tasks, seeds and unit")


def _check_distinct(command: str, run_dirs) -> None:
    paths = [Path(d).resolve() for d in run_dirs]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            raise BenchError(f"{command}: {run_dirs[paths.index(path)]} and {run_dirs[i]} "
                             "are the same run directory; name each run once")


def load_runs(run_dirs, command: str) -> MergedRun:
    """Read and check every directory; nothing is written here."""
    run_dirs = [str(d) for d in run_dirs]
    _check_distinct(command, run_dirs)
    loaded = [(d, *load_run(d)) for d in run_dirs]
    first, trials0, info0 = loaded[0]
    for other, trials, info in loaded[1:]:
        for what, a, b in (("tasks", set(trials0[TASK]), set(trials[TASK])),
                           ("seeds", set(trials0[SEED]), set(trials[SEED]))):
            if a != b:
                raise _differ(command, first, other, what, a, b)
        if info0.unit != info.unit:
            raise _differ(command, first, other, "compute units", info0.unit, info.unit)
    kept, frames, reports, repeated = set(), [], [], {}
    for run_dir, trials, _ in loaded:
        labels = set(trials[METHOD])
        for label in sorted(labels & kept):
            repeated.setdefault(label, []).append(run_dir)
        new = labels - kept
        frames.append(trials[trials[METHOD].isin(new)])
        run_reports = read_reports(run_dir)
        reports.append(run_reports[run_reports[METHOD].isin(new)])
        kept |= labels
    caps = {}
    for _, _, info in reversed(loaded):
        caps.update(info.caps)  # the first directory's cap wins
    merged = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    reports = [r for r in reports if len(r)]
    return MergedRun(merged, RunInfo(info0.reference, info0.unit, caps),
                     pd.concat(reports, ignore_index=True) if reports else read_reports(first),
                     tuple(run_dirs), repeated,
                     {d: info.reference for d, _, info in loaded[1:]
                      if info.reference != info0.reference})


def output_dir(run_dirs, out, command: str, name: str) -> Path:
    """Where the merged output goes (``out``, else the first directory), checked before any
    drawing: an existing directory that takes ``name``, or one that can be made."""
    target = Path(out) if out is not None else Path(run_dirs[0])
    existing = next(p for p in (target, *target.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise BenchError(f"{command}: --out {target} ({existing}) is a file, not a directory")
    check_writable(existing, name)
    return target


def merged_note(merged: MergedRun) -> str:
    """One line for a merged report: what it holds and what it left out."""
    if len(merged.run_dirs) == 1:
        return ""
    note = "Merged from " + ", ".join(f"`{d}`" for d in merged.run_dirs) + "."
    for run_dir, reference in merged.other_references.items():
        note += (f" Every method is compared with `{merged.info.reference}` (the first "
                 f"directory's reference); `{run_dir}` named `{reference}`.")
    for label, dirs in merged.repeated.items():
        note += (f" `{label}` is read from the first directory that has it; its runs in "
                 + ", ".join(f"`{d}`" for d in dirs) + " are left out.")
    return note
