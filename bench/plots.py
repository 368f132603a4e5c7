"""The accuracy-vs-compute trade-off figure of a run (METHODS.md section 4)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.curves import aggregate_curves, anytime_curves, grid_bootstrap
from bench.records import atomic_write
from bench.schema import COMPUTE_S, METHOD, TASK

GRID = "grid"


def _save_atomic(fig: Figure, path: Path) -> None:
    """A reader never sees a half-written figure, and a crash leaves the old one in place."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:], bbox_inches="tight"))


def _panel(ax, task: str, agg: pd.DataFrame, boot: pd.DataFrame | None) -> None:
    colors = {}
    for method, g in agg.groupby(METHOD, sort=True):
        x = g[COMPUTE_S]
        (line,) = ax.step(x, 100 * g["mean"], where="post", label=method)
        ax.fill_between(x, 100 * g["low"], 100 * g["high"], step="post", alpha=0.2,
                        color=line.get_color(), linewidth=0)
        colors[method] = line.get_color()
    if boot is not None and "complete" in boot:
        boot = boot[boot["complete"].astype(bool)]  # exact only if every config was retrained
    if boot is not None and not boot.empty:
        ax.plot(boot[COMPUTE_S], 100 * boot["mean"], "--", color=colors.get(GRID),
                label="grid (subset bootstrap)")
    ax.set_xscale("log")
    ax.set_title(task)
    ax.set_xlabel("compute (resource-seconds)")
    ax.set_ylabel("balanced test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    if agg.empty:
        ax.text(0.5, 0.5, "no scored point yet", ha="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize="small")


def plot_tradeoff(trials: pd.DataFrame, out_stem: Path) -> list[Path]:
    """One panel per task so methods are compared only under the same budget.

    Lines: mean over seeds as a step line, band = low/high of ``aggregate_curves``; dashed:
    the grid's subset bootstrap where a method named "grid" exists.
    """
    curves = anytime_curves(trials)
    agg = aggregate_curves(curves) if not curves.empty else curves.assign(
        mean=[], low=[], high=[])  # no scored point yet: empty panels, still a figure
    tasks = sorted(set(trials[TASK]))
    boot = grid_bootstrap(trials) if GRID in set(curves[METHOD]) else None
    cols = min(len(tasks), 3)
    rows = math.ceil(len(tasks) / cols)
    fig = Figure(figsize=(5.5 * cols, 4.2 * rows))
    FigureCanvasAgg(fig)
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(rows, cols, i + 1)
        task_boot = None if boot is None else boot[boot[TASK] == task]
        _panel(ax, task, agg[agg[TASK] == task], task_boot)
    fig.tight_layout()
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_name(out_stem.name + ext) for ext in (".png", ".svg")]
    for path in paths:
        _save_atomic(fig, path)
    return paths
