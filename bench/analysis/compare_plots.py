"""The figures of ``bench compare``: the anytime aggregate (mean normalised regret and mean
rank over tasks against the budget, with bootstrap intervals over tasks), performance
profiles at the full budget, and the critical-difference diagram."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.analysis.plots import PALETTE, _save_atomic, plain_number
from bench.analysis.stats import CONFIDENCE
from bench.contract.schema import LEARNED, METHOD

# a second cue besides colour, so that 8 or more lines stay apart in grey print too
STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")


def frac(f: float) -> str:
    return str(Fraction(f).limit_denominator(1000))


def _styles(methods, kinds) -> dict:
    """Colour by method; learned methods dashed, search solid; a marker each."""
    return {m: {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)],
                "ls": "--" if kinds.get(m) == LEARNED else "-"}
            for i, m in enumerate(methods)}


def _budget_axis(ax, xs) -> None:
    ax.set_xscale("log")
    ax.set_xlim(min(xs), max(xs))  # set, not found: a panel may hold no finite value
    ax.set_xticks([f for f in (1 / 64, 1 / 16, 1 / 4, 1) if min(xs) <= f <= max(xs)])
    ax.xaxis.set_major_formatter(lambda x, _: frac(x) if x < 1 else plain_number(x))
    ax.xaxis.set_minor_formatter(lambda x, _: "")
    ax.set_xlabel("budget: fraction of the reference's final compute, per task", fontsize=9)
    ax.grid(True, alpha=0.3)


def plot_anytime(summary: pd.DataFrame, out_stem: Path) -> list[Path]:
    """Two panels against the budget fraction: mean normalised regret over the non-tie tasks
    and mean rank over all tasks, each with its bootstrap interval over tasks; solid where
    the mean covers all the method's tasks, dotted where some have no value yet."""
    kinds = summary.groupby(METHOD)["kind"].first().to_dict()
    final = summary[summary["fraction"] == summary["fraction"].max()]
    methods = list(final.sort_values("rank")[METHOD])
    styles = _styles(methods, kinds)
    fig = Figure(figsize=(13, 4.8))
    FigureCanvasAgg(fig)
    panels = (("regret", "mean normalised regret (0 = best config, 1 = median)",
               "regret_tasks"), ("rank", "mean rank (1 = best)", "tasks"))
    for i, (col, label, full) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for m in methods:
            g = summary[summary[METHOD] == m].sort_values("fraction")
            x, y = g["fraction"].to_numpy(float), g[col].to_numpy(float)
            counted = g["regret_n"] if col == "regret" else g["rank"].notna() * g["tasks"]
            whole = (counted.to_numpy() >= g[full].to_numpy()) & ~np.isnan(y)
            st = styles[m]
            ax.plot(x, np.where(whole, np.nan, y), color=st["color"], lw=1.2, ls=":")
            ax.plot(x, np.where(whole, y, np.nan), color=st["color"], lw=1.8, ls=st["ls"],
                    marker=st["marker"], ms=4, markevery=4)
            ax.fill_between(x, g[f"{col}_low"], g[f"{col}_high"], color=st["color"],
                            alpha=0.12, lw=0)
        _budget_axis(ax, summary["fraction"])
        ax.set_ylabel(label, fontsize=9)
        if summary[col].isna().all():
            ax.set_ylim(0, 1)
            ax.text(0.5, 0.5, "no task has a value (ties only)", ha="center",
                    transform=ax.transAxes, fontsize=9)
        if col == "rank":
            ax.invert_yaxis()
        else:  # linear to 1 (a median configuration), compressed beyond: early values
            ax.set_yscale("symlog", linthresh=1.0, linscale=2.0)  # can be many times that
            values = summary[["regret", "regret_low", "regret_high"]].to_numpy(float)
            if np.isfinite(values).any():
                lo, hi = min(0.0, np.nanmin(values)), max(1.0, np.nanmax(values))
                ax.set_ylim(lo - 0.05, hi * 1.1)
                ax.set_yticks([t for t in (-0.5, 0, 0.25, 0.5, 0.75, 1, 2, 5, 10, 20, 50)
                               if lo - 0.05 <= t <= hi * 1.1])
            ax.yaxis.set_major_formatter(lambda y, _: f"{y:g}")
            ax.yaxis.set_minor_formatter(lambda y, _: "")
    handles = [Line2D([], [], color=styles[m]["color"], ls=styles[m]["ls"], lw=1.8,
                      marker=styles[m]["marker"], ms=4,
                      label=m + (" (learned)" if kinds.get(m) == LEARNED else ""))
               for m in methods]
    handles.append(Line2D([], [], color="grey", ls=":", lw=1.2,
                          label="some of its tasks have no value yet"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8,
               frameon=False, title="method (order: final mean rank)", title_fontsize=8)
    fig.text(0.01, -0.02, f"Bands: {round(100 * CONFIDENCE)}% bootstrap interval of the mean "
             "over tasks (percentile). Regret: over the tasks that are no tie, its axis linear "
             "to 1 and logarithmic beyond; rank: over all the method's tasks.", fontsize=8,
             va="top")
    return _save(fig, out_stem)


def plot_profile(profile: pd.DataFrame, out_stem: Path, tasks: dict | None = None
                 ) -> list[Path]:
    """Performance profiles: for each method the share of its tasks within tau (normalised
    regret) of the best method on the task, against tau (``profile``: one row per tau);
    the axis ends a little after the last change. ``tasks``: each method's task count."""
    methods = list(profile.columns[np.argsort(-profile.fillna(0).sum().to_numpy(),
                                              kind="stable")])
    styles = _styles(methods, {})
    fig = Figure(figsize=(7.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, m in enumerate(methods):
        st = styles[m]
        ax.step(profile.index, profile[m], where="post", color=st["color"],
                ls=STYLES[i % len(STYLES)], lw=1.8,
                label=m + (f" ({tasks[m]} tasks)" if tasks and m in tasks else ""))
    changes = profile.index[1:][(profile.diff().iloc[1:].fillna(0) != 0).any(axis=1)]
    last = changes.max() if len(changes) else profile.index.max()
    ax.set_xlim(profile.index.min(), min(profile.index.max(), 1.15 * last + 0.05))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau: normalised regret above the task's best method", fontsize=9)
    ax.set_ylabel("share of the method's tasks within tau", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, out_stem)


def plot_cd(test: dict, out_stem: Path) -> list[Path]:
    """Critical-difference diagram: methods on a rank axis; a bar joins methods whose mean
    ranks differ by less than the critical difference (no significant difference)."""
    ranks = test["mean_rank"]
    k, cd = len(ranks), test["cd"]
    fig = Figure(figsize=(7.5, 1.2 + 0.28 * k))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(1.5 + 0.5 * ((k + 1) // 2), -1.6)
    ax.axis("off")
    ax.plot([1, k], [0, 0], color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [-0.12, 0.12], color="black", lw=1)
        ax.text(r, -0.3, str(r), ha="center", va="bottom", fontsize=8)
    ax.plot([1, 1 + cd], [-1.1, -1.1], color="black", lw=1.5)
    ax.text(1 + cd / 2, -1.25, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    half = (k + 1) // 2
    for i, (m, r) in enumerate(ranks.items()):
        left = i < half
        y = 1 + (i if left else k - 1 - i) * 0.5
        x_text = 0.6 if left else k + 0.4
        ax.plot([r, r, x_text], [0, y, y], color="black", lw=0.8)
        ax.text(x_text, y, f"{m} ({r:.2f})", ha="left" if not left else "right", va="center",
                fontsize=8, clip_on=False)
    values = ranks.to_numpy()
    groups, level = [], 0
    for i in range(k):
        j = max(j for j in range(i, k) if values[j] - values[i] < cd)
        if j > i and not any(a <= i and j <= b for a, b in groups):
            groups.append((i, j))
    for a, b in groups:
        y = 0.35 + 0.18 * level
        ax.plot([values[a] - 0.03, values[b] + 0.03], [y, y], color="black", lw=3)
        level += 1
    return _save(fig, out_stem)


def _save(fig: Figure, out_stem: Path) -> list[Path]:
    fig.tight_layout()
    paths = [out_stem.with_name(out_stem.name + ext) for ext in (".png", ".svg")]
    for path in paths:
        _save_atomic(fig, path)
    return paths

