"""What a run directory says besides its tables: the reference method, the unit its compute
is counted in, and each task's cap. Read from metadata.json and suite.toml as text (no suite
is built: no torch), with fallbacks for directories written by older harnesses."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.records.tables import read_trials

GRID_PLUGIN = "grid"
CPU_UNIT = S.UNIT_LABELS["cpu"]
GPU_UNIT = S.UNIT_LABELS["gpu"]
#: runs written before budgets had a unit charged wall x (CPUs + GPUs) when they held GPUs
MIXED_UNIT = "resource-seconds (CPU cores + GPUs held)"


@dataclass(frozen=True)
class RunInfo:
    reference: str | None  # the label every method is compared with; None: the best one
    unit: str  # what one unit of compute is, for axis labels and table headers
    caps: dict[str, float] = field(default_factory=dict)  # task -> tuning cap per campaign


def read_metadata(run_dir: str | Path) -> dict:
    """metadata.json, or {} where there is none (published records, tests); one that is
    there but unreadable, or no JSON object, is refused in one line naming it."""
    path = Path(run_dir) / S.METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise BenchError(f"{path}: cannot be read ({err.strerror or type(err).__name__})"
                         ) from None
    except ValueError as err:  # malformed JSON, or not UTF-8
        raise BenchError(f"{path}: not valid JSON ({str(err).split(':')[0]})") from None
    if not isinstance(metadata, dict):
        raise BenchError(f"{path}: expected a JSON object (the run's metadata), got a "
                         f"{type(metadata).__name__}")
    return metadata


def default_reference(trials: pd.DataFrame) -> str | None:
    """The first label (in record order) whose plugin is the grid; only for records without
    a plugin column, the label "grid" (a label "grid" running another plugin is not it);
    None if neither exists."""
    if S.PLUGIN in trials and trials[S.PLUGIN].notna().any():
        grid = trials[S.PLUGIN] == GRID_PLUGIN
        return str(trials.loc[grid, S.METHOD].iloc[0]) if grid.any() else None
    return GRID_PLUGIN if (trials[S.METHOD] == GRID_PLUGIN).any() else None


def metadata_unit(metadata: dict) -> str | None:
    """The unit a run's budget counted compute in ("gpu" or "cpu", ``S.UNIT_LABELS``), as
    its metadata.json records it; a run from before budgets had units: "cpu" if its trials
    held no GPU, else None (it charged CPUs + GPUs together)."""
    if not isinstance(metadata, dict):
        return None
    if metadata.get("compute_unit") == S.GPU_S:  # a replay of published (A100) runtimes
        return "gpu"
    budget = metadata.get("budget")
    if not isinstance(budget, dict):
        return None
    if budget.get("unit") in S.UNIT_LABELS:
        return str(budget["unit"])
    return "cpu" if "unit" not in budget and budget.get("gpus_per_worker") == 0 else None


def compute_unit(trials: pd.DataFrame, metadata: dict) -> str:
    """The records' own unit, as axes and tables name it: published runtimes are A100
    GPU-seconds; a run's budget names its unit in metadata.json. Runs from before budgets
    had units: read from the records (GPU time only: GPU-seconds, CPU time only: CPU
    core-seconds, otherwise their sum)."""
    metadata = metadata if isinstance(metadata, dict) else {}
    if metadata.get("compute_label"):  # a replay of published records says so itself
        return str(metadata["compute_label"])
    if str(metadata.get("records", "")).startswith("published:"):
        return f"A100 {GPU_UNIT}, published runtimes"
    budget = metadata.get("budget")
    if isinstance(budget, dict) and budget.get("unit") in S.UNIT_LABELS:
        return S.UNIT_LABELS[budget["unit"]]
    if S.RESOURCE_S not in trials:
        return CPU_UNIT
    charged = trials[trials[S.RESOURCE_S].fillna(0) > 0]
    if charged.empty:
        return MIXED_UNIT if isinstance(budget, dict) and budget.get("gpus_per_worker") \
            else CPU_UNIT
    zero = pd.Series(0.0, index=charged.index)
    gpu = charged[S.GPU_S].fillna(0) if S.GPU_S in charged else zero
    cpu = charged[S.CPU_S].fillna(0) if S.CPU_S in charged else zero
    if (gpu - charged[S.RESOURCE_S]).abs().max() < 1e-9:
        return GPU_UNIT
    if (gpu == 0).all() and (cpu - charged[S.RESOURCE_S]).abs().max() < 1e-9:
        return CPU_UNIT
    return MIXED_UNIT


def task_caps(suite_text: str, metadata: dict) -> dict[str, float]:
    """Each task's cap (its own ``cap_s`` or the budget's), keyed by task name as
    ``bench.zoo.task.Task`` names it (``<dataset>-N<n>-<backbone>`` unless ``name`` is set)."""
    try:
        raw = tomllib.loads(suite_text)
    except tomllib.TOMLDecodeError:
        return {}
    budget_cap = raw.get("budget", {}).get("cap_s", metadata.get("budget", {}).get("cap_s"))
    caps = {}
    for table in raw.get("tasks") or []:
        if not isinstance(table, dict):
            continue
        name = (table.get("name")  # else as bench.zoo.task.Task names it
                or f"{table.get('dataset')}-N{table.get('n')}-{table.get('backbone')}")
        cap = table.get("cap_s", budget_cap)
        if isinstance(cap, (int, float)) and not isinstance(cap, bool):
            caps[str(name)] = float(cap)
    return caps


def run_info(run_dir: str | Path, trials: pd.DataFrame) -> RunInfo:
    metadata = read_metadata(run_dir)
    try:
        suite_text = (Path(run_dir) / S.SUITE_FILE).read_text()
    except OSError:
        suite_text = ""
    # a run's metadata names its reference, None included (no grid plugin: the best
    # method); older directories without the key fall back to the records
    reference = (metadata[S.REFERENCE] if S.REFERENCE in metadata
                 else default_reference(trials))
    return RunInfo(reference, compute_unit(trials, metadata), task_caps(suite_text, metadata))


def load_run(run_dir: str | Path) -> tuple[pd.DataFrame, RunInfo]:
    """A run directory's trials and what its metadata says, for reports, plots and
    comparisons: a run with no trial ended yet has nothing to draw, and says so."""
    trials = read_trials(run_dir)
    if trials.empty:
        raise BenchError(f"{run_dir}: no trial has ended yet ({S.TRIALS_FILE} is empty): "
                         "nothing to report, plot or compare")
    return trials, run_info(run_dir, trials)
