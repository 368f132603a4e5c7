"""The accuracy-vs-compute trade-off figure of a run (docs/methods.md#anytime-curves).

One row per task, or small multiples (pages of at most 24 panels, 6 a row) for more than
6 tasks; search methods and learned methods in separate panels (the reference drawn in
both), the same colour for a method everywhere, the legend and a caption that defines the
band outside the panels, plain tick labels in the records' own unit.
"""

from __future__ import annotations

import fnmatch
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import TICKDOWN, Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from bench.analysis.curves import (AGGREGATE_COLUMNS, BANDS, TOLERANCE, aggregate_curves,
                                   anytime_curves, final_points, grid_bootstrap, method_kinds,
                                   sweep_best)
from bench.analysis.stats import CONFIDENCE, RESAMPLES
from bench.contract.errors import BenchError
from bench.contract.schema import (COMPUTE_S, LEARNED, METHOD, PLOT_STEM, PLUGIN, SEED, TASK,
                                   TEST_ACC)
from bench.driver.forked import fork_map
from bench.records.rundir import GRID_PLUGIN, default_reference
from bench.records.tables import atomic_write

DPI = 160
PAD_INCHES = 0.1  # around the drawing (savefig.pad_inches' default)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f",  # matplotlib's tab10, grey last; then, so that
           "#000080", "#9acd32", "#800000", "#ff1493", "#008080", "#daa520")  # 16 differ
PANEL = (5.4, 3.7)  # inches per panel, one row per task
GRID_PANEL = (3.6, 2.7)  # inches per panel of the small multiples (> MAX_COLUMNS tasks)
# the space between panels, in inches (width, height): a panel's y tick labels; the x tick
# labels and axis label of the one above, and the title of the one below. A little more
# than what tight_layout finds, which measured every text (a drawing of the whole page).
GAPS = {"rows": (0.55, 0.8), "grid": (0.5, 0.7)}
MARGINS = (0.7, 0.3, 0.6, 0.4)  # left, right, bottom, top: cropped to the drawing anyway
MAX_COLUMNS = 6
PAGE_PANELS = 24
BAND_LABEL = {"ci": f"{round(100 * CONFIDENCE)}% interval of the mean",
              "minmax": "lowest to highest seed", "none": ""}
BAND_TEXT = {
    "ci": f"band: {round(100 * CONFIDENCE)}% bootstrap interval of the mean over seeds "
          f"(percentile, {RESAMPLES} resamples; narrow with few seeds)",
    "minmax": "band: lowest to highest seed",
    "none": "no band",
}


def tight_bbox(fig: Figure):
    """What the figure draws, legend and caption outside the panels included, padded: the
    crop ``bbox_inches="tight"`` makes, measured once (``savefig`` would draw the whole
    figure a second time to measure it, for every file)."""
    return fig.get_tightbbox(fig.canvas.get_renderer()).padded(PAD_INCHES)


def _save_atomic(fig: Figure, path: Path, bbox=None) -> None:
    """A reader never sees a half-written figure, and a crash leaves the old one in place.
    Cropped to ``bbox`` (default: ``tight_bbox``, measured now)."""
    bbox = tight_bbox(fig) if bbox is None else bbox
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:], dpi=DPI,
                                               bbox_inches=bbox))


def plain_number(x: float, _pos=None) -> str:
    """Tick text without exponents: 0.5, 300, 2k, 40k, 1.5M."""
    if x >= 1e6:
        return f"{x / 1e6:g}M"
    if x >= 1e3:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def _log_axis(ax) -> None:
    """Ticks at 1, 2, 5 x 10^k (finer below 1.3 decades, only 10^k beyond 3), plain text."""
    lo, hi = ax.get_xlim()
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs = ((1.0,) if decades > 3 else (1.0, 2.0, 5.0) if decades > 1.3
            else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=30))
    ax.xaxis.set_major_formatter(FuncFormatter(plain_number))
    ax.xaxis.set_minor_locator(NullLocator())
    _minor_marks(ax, lo, hi)


def _minor_marks(ax, lo: float, hi: float) -> None:
    """Minor ticks at 1..9 x 10^k and their faint grid, as two artists: drawn as minor
    ticks, each one (some 30 a panel) is five artists measured and drawn one by one, a
    fifth of the figure's time."""
    major = ax.xaxis.get_majorticklocs()
    xs = [x for x in LogLocator(base=10, subs=np.arange(1, 10), numticks=30).tick_values(lo, hi)
          if lo <= x <= hi and not np.isclose(x, major).any()]  # as minor ticks skip majors
    along = ax.get_xaxis_transform()  # x in data, y in axes: 0 is the bottom spine
    ax.add_collection(LineCollection([[(x, 0), (x, 1)] for x in xs], transform=along,
                                     colors=rcParams["grid.color"], alpha=0.08,
                                     linewidths=rcParams["grid.linewidth"], zorder=1.5),
                      autolim=False)
    ax.add_artist(Line2D(xs, [0] * len(xs), transform=along, ls="", marker=TICKDOWN,
                         ms=rcParams["xtick.minor.size"], mew=rcParams["xtick.minor.width"],
                         color=rcParams["xtick.color"], clip_on=False))


def _draw_method(ax, g: pd.DataFrame, color, band: str, width: float = 1.8) -> None:
    """Dashed while some seed has no point yet; solid, with the band, from where all do."""
    x, y = g[COMPUTE_S].to_numpy(float), 100 * g["mean"].to_numpy(float)
    complete = g["complete"].to_numpy(bool)
    if not complete.all():
        upto = np.argmax(complete) + 1 if complete.any() else len(x)
        ax.step(x[:upto], y[:upto], where="post", color=color, lw=0.9, ls=(0, (3, 2)),
                alpha=0.8)
    if complete.any():
        xc = np.append(x[complete], x[complete][-1])  # one step's width at the end
        yc = np.append(y[complete], y[complete][-1])
        ax.step(xc, yc, where="post", color=color, lw=width)
        if band != "none":
            lo = np.append(g["low"].to_numpy(float)[complete], g["low"].iloc[-1])
            hi = np.append(g["high"].to_numpy(float)[complete], g["high"].iloc[-1])
            ax.fill_between(xc, 100 * lo, 100 * hi, step="post", color=color, alpha=0.15, lw=0)


def _panel(ax, rows: pd.DataFrame, colors: dict, band: str, title: str) -> None:
    for method, g in rows.groupby(METHOD, sort=True):
        _draw_method(ax, g, colors[method], band)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)


def _learned_marks(ax, finals: pd.DataFrame, oracle: pd.Series, methods, colors) -> None:
    """Star: where each learned method's selected run lands (mean over seeds); circle: the
    best run of its sweep by test accuracy (an oracle), joined by a dotted line."""
    for m in methods:
        if m not in finals.index.get_level_values(METHOD):
            continue
        f = finals.xs(m, level=METHOD)
        x, y = f[COMPUTE_S].mean(), 100 * f[TEST_ACC].mean()
        ax.plot([x], [y], marker="*", ms=11, color=colors[m], mec="black", mew=0.6, zorder=5)
        if m in oracle.index:
            ax.plot([x, x], [y, 100 * oracle[m]], ls=":", color=colors[m], lw=1)
            ax.plot([x], [100 * oracle[m]], marker="o", ms=6, mfc="white", mec=colors[m],
                    mew=1.5, zorder=5)


def _legend(fig, colors: dict, kinds: dict, seeds: dict, extras: dict) -> None:
    handles = [Line2D([], [], color=colors[m], lw=1.8,
                      label=f"{m} ({'learned, ' if kinds.get(m) == LEARNED else ''}"
                            f"{seeds.get(m, 0)} seed{'' if seeds.get(m) == 1 else 's'})")
               for m in colors]
    handles += [Line2D([], [], color="grey", lw=1.8, label="mean over all seeds"),
                Line2D([], [], color="grey", lw=0.9, ls=(0, (3, 2)),
                       label="mean while some seeds have no point")]
    if extras.get("band"):
        handles.append(Patch(color="grey", alpha=0.25, label=extras["band"]))
    if extras.get("boot"):
        handles.append(Line2D([], [], color="black", lw=1, ls=(0, (1, 1.5)),
                              label="grid subset bootstrap (k configs)"))
    handles.append(Line2D([], [], color="black", lw=0.8, ls="--", label="target"))
    if extras.get("cap"):
        handles.append(Line2D([], [], color="firebrick", lw=0.8, ls="-.", label="cap"))
    if extras.get("learned"):
        handles += [Line2D([], [], ls="", marker="*", ms=10, color="grey", mec="black",
                           label="selected run (learned)"),
                    Line2D([], [], ls="", marker="o", ms=6, mfc="white", mec="grey",
                           label="best run of the sweep (oracle)")]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.98), fontsize=8,
               frameon=False)


def _draw_task(ax, task: str, kind: str, c: dict, extras: dict, grid: bool) -> None:
    """One panel: one task's methods of one kind (search or learned)."""
    task_agg, shown, kinds, reference = c["agg"][c["agg"][TASK] == task], c["shown"], \
        c["kinds"], c["reference"]
    finals = c["finals"]
    ref_final = (finals.loc[(task, reference)][TEST_ACC].mean()
                 if finals is not None and (task, reference) in finals.index.droplevel(2)
                 else None)
    mine = [m for m in shown if kinds[m] == kind]
    rows = task_agg[task_agg[METHOD].isin(mine)]
    title = task if len(c["columns"]) == 1 else \
        f"{task}: {'search' if kind == 'search' else 'learned'}{'' if grid else ' methods'}"
    _panel(ax, rows, c["colors"], c["band"], title)
    if grid:
        ax.title.set_fontsize(8)
        ax.tick_params(labelsize=7)
    if kind == LEARNED and reference in shown and reference not in mine:
        ref = task_agg[task_agg[METHOD] == reference]
        for _, g in ref.groupby(METHOD):
            _draw_method(ax, g, c["colors"][reference], "none", width=1.0)
    if kind == LEARNED and finals is not None:
        oracle = c["oracle"]
        task_oracle = oracle.xs(task, level=TASK) if task in oracle.index.get_level_values(
            TASK) else pd.Series(dtype=float)
        _learned_marks(ax, finals.xs(task, level=TASK), task_oracle.groupby(METHOD).mean()
                       if len(task_oracle) else task_oracle, mine, c["colors"])
    boot = c["boot"]
    if kind == "search" and boot is not None and not boot[boot[TASK] == task].empty:
        b = boot[boot[TASK] == task]
        ax.plot(b[COMPUTE_S], 100 * b["mean"], color="black", lw=1, ls=(0, (1, 1.5)))
        extras["boot"] = True
    if rows.empty and not (kind == LEARNED and reference in shown):
        ax.text(0.5, 0.5, "no scored point yet", ha="center", transform=ax.transAxes)
    if ref_final is not None:
        ax.axhline(100 * (ref_final - TOLERANCE), color="black", lw=0.8, ls="--")
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    caps = c["caps"]
    if task in caps and lo <= caps[task] <= hi * 1.5:
        ax.axvline(caps[task], color="firebrick", lw=0.8, ls="-.")
        extras["cap"] = True
    _log_axis(ax)


def _lay_out(fig: Figure, ncols: int, nrows: int, gaps: tuple[float, float]) -> None:
    """Panels ``gaps`` inches apart. Fixed rather than tight_layout's: every panel has the
    same size and fonts, so measuring each one's texts (a third drawing of the page, as
    long as its PNG's) would find the same spaces; ``tests/test_merge.py`` checks that no
    two panels' texts meet."""
    width, height = fig.get_size_inches()
    left, right, bottom, top = MARGINS
    panel_w = (width - left - right - (ncols - 1) * gaps[0]) / ncols
    panel_h = (height - bottom - top - (nrows - 1) * gaps[1]) / nrows
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=gaps[0] / panel_w,
                        hspace=gaps[1] / panel_h)


def _page_size(panels: int, ncols: int) -> int:
    """Panels a page of small multiples holds: at most ``PAGE_PANELS``, the pages filled
    evenly in whole rows (29 tasks: 18 and 11, not 24 and 5), so that they are drawn side
    by side in about the same time."""
    pages = -(-panels // PAGE_PANELS)  # ceil
    per_page = -(-panels // pages)
    return -(-per_page // ncols) * ncols


def page_paths(out_stem: Path, page: int) -> list[Path]:
    """Page 1 is ``out_stem``.png/.svg, page k ``out_stem``-k.png/.svg."""
    name = out_stem.name if page == 1 else f"{out_stem.name}-{page}"
    return [out_stem.with_name(name + ext) for ext in (".png", ".svg")]


def _select_tasks(trials: pd.DataFrame, pattern: str | None) -> list[str]:
    tasks = sorted(set(trials[TASK]))
    if pattern is None:
        return tasks
    chosen = [t for t in tasks if fnmatch.fnmatchcase(t, pattern)]
    if not chosen:
        raise BenchError(f"plot: no task matches --tasks {pattern!r}; the tasks are "
                         + ", ".join(tasks[:6]) + (f" and {len(tasks) - 6} more"
                                                  if len(tasks) > 6 else ""))
    return chosen


def plot_tradeoff(trials: pd.DataFrame, out_stem: Path, *, reference: str | None = None,
                  unit: str = "resource-seconds", caps: dict | None = None,
                  methods: list[str] | None = None, band: str = "ci",
                  tasks: str | None = None) -> list[Path]:
    """Per task, search and learned methods in separate panels, so methods are compared only
    under the same budget. Up to ``MAX_COLUMNS`` tasks: one row per task; more: small
    multiples, at most ``MAX_COLUMNS`` panels a row and ``PAGE_PANELS`` a page (pages
    filled evenly, ``_page_size``), one figure per page with its own legend. ``tasks``: an fnmatch pattern of the tasks to draw.
    Writes ``out_stem``.png and .svg (more pages: ``out_stem``-2.png, ...); returns them."""
    if band not in BANDS:
        raise BenchError(f"plot: band must be one of {', '.join(BANDS)}, got {band!r}")
    reference = reference or default_reference(trials)
    task_list = _select_tasks(trials, tasks)
    trials = trials[trials[TASK].isin(task_list)]
    known = sorted(set(trials[METHOD]))
    unknown = [m for m in methods or [] if m not in known]
    if unknown:
        raise BenchError(f"plot: no method {unknown[0]!r} in the records; they have: "
                         f"{', '.join(known)}")
    shown = [m for m in known if not methods or m in methods]
    kinds = method_kinds(trials)
    columns = [k for k in ("search", LEARNED) if any(kinds[m] == k for m in shown)] or ["search"]
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(known) if m in shown}
    panels = [(task, kind) for task in task_list for kind in columns]
    grid = len(task_list) > MAX_COLUMNS
    ncols = MAX_COLUMNS if grid else len(columns)
    per_page = _page_size(len(panels), ncols) if grid else len(panels)
    size = GRID_PANEL if grid else PANEL
    seeds = trials.groupby(METHOD)[SEED].nunique().to_dict()
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    pages = [panels[i:i + per_page] for i in range(0, len(panels), per_page)]

    def prepare(page_trials: pd.DataFrame) -> dict:
        """What a page's panels draw, from its tasks' records only (each task's curves,
        band and grid bootstrap are its own): pages are prepared side by side."""
        curves = anytime_curves(page_trials)
        agg = (aggregate_curves(curves, band="minmax" if band == "none" else band)
               if len(curves) else pd.DataFrame(columns=AGGREGATE_COLUMNS))  # nothing scored
        boot = None
        ref_plugins = (page_trials.loc[page_trials[METHOD] == reference, PLUGIN].dropna()
                       if PLUGIN in page_trials else pd.Series(dtype=object))
        ref_is_grid = ((ref_plugins == GRID_PLUGIN).any() if len(ref_plugins)
                       else reference == GRID_PLUGIN)  # an old run: the label says it
        if ref_is_grid and reference in set(curves[METHOD]) and reference in shown:
            boot = grid_bootstrap(page_trials, method=reference)
            boot = boot[boot["complete"].astype(bool)]  # exact only if all were retrained
        return {"agg": agg, "shown": shown, "kinds": kinds, "reference": reference,
                "band": band, "finals": final_points(curves) if not curves.empty else None,
                "oracle": sweep_best(page_trials), "boot": boot, "caps": caps or {},
                "columns": columns, "colors": colors}

    def draw(number: int) -> list[Path]:
        page = pages[number - 1]
        c = prepare(trials[trials[TASK].isin({task for task, _ in page})])
        nrows = -(-len(page) // ncols)
        fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=DPI)
        FigureCanvasAgg(fig)
        extras = {"band": BAND_LABEL[band], "learned": LEARNED in columns}
        axes = {}
        for i, (task, kind) in enumerate(page):
            ax = fig.add_subplot(nrows, ncols, i + 1, sharey=axes.get(task))
            axes.setdefault(task, ax)
            _draw_task(ax, task, kind, c, extras, grid)
            ax.set_xlabel(f"compute ({unit})", fontsize=7 if grid else 9)
            if i % ncols == 0:
                ax.set_ylabel("balanced test accuracy (%)", fontsize=7 if grid else 9)
        _legend(fig, colors, kinds, seeds, extras)
        _lay_out(fig, ncols, nrows, GAPS["grid" if grid else "rows"])
        _caption(fig, reference, band, extras, size[0] * ncols)

        bbox = tight_bbox(fig)  # once for both files

        def save(path: Path) -> Path:
            _save_atomic(fig, path, bbox)
            return path
        # laid out and measured once, the page's PNG and SVG are drawn side by side
        return list(fork_map(save, page_paths(out_stem, number)))

    paths = [path for files in fork_map(draw, range(1, len(pages) + 1)) for path in files]
    _remove_stale_pages(out_stem, len(pages))
    return paths


def _caption(fig, reference, band: str, extras: dict, width_in: float) -> None:
    target = (f"target: the reference ({reference})'s final mean minus {100 * TOLERANCE:g} "
              "point" if reference else "no reference method, no target")
    caption = (f"Lines: mean over seeds of the test accuracy of what each method holds "
               f"(search: the incumbent by validation NLL, retrained on all N, the retraining "
               f"charged; learned: its sweep's run with the lowest objective) against the "
               f"compute spent; solid from where every seed has a point. "
               + (f"{BAND_TEXT[band].capitalize()}, drawn there. " if band != "none" else "")
               + f"Dashed horizontal: {target}."
               + (" Dash-dot vertical: the tuning cap of each (task, method, seed)."
                  if extras.get("cap") else "")
               + (" Star: where each learned method's selected run lands (mean over seeds); "
                  "circle: the best run of its sweep by test accuracy." if extras["learned"]
                  else ""))
    fig.text(0.01, 0.0, "\n".join(textwrap.wrap(caption, int(14 * width_in))), va="top",
             ha="left", fontsize=8)


def _remove_stale_pages(out_stem: Path, pages: int) -> None:
    """Pages an earlier, longer figure left behind would pass for part of this one."""
    page = pages + 1
    while any(p.exists() for p in page_paths(out_stem, page)):
        for path in page_paths(out_stem, page):
            path.unlink(missing_ok=True)
        page += 1


def plot_run(run_dirs, methods: list[str] | None = None, band: str = "ci",
             tasks: str | None = None, out: str | Path | None = None) -> list[Path]:
    """The figure of a run directory, or of several merged (``bench.analysis.merge``), with
    its reference, unit and caps; written into ``out``, else the first directory."""
    from bench.analysis.merge import load_runs, output_dir

    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    merged = load_runs(run_dirs, "plot")
    target = output_dir(run_dirs, out, "plot", f"{PLOT_STEM}.png")  # before the drawing
    _select_tasks(merged.trials, tasks)
    return plot_tradeoff(merged.trials, target / PLOT_STEM, reference=merged.info.reference,
                         unit=merged.info.unit, caps=merged.info.caps, methods=methods,
                         band=band, tasks=tasks)
