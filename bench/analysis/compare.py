"""``bench compare RUN_DIR...``: one summary over every task of one or several runs.

Per task, each method's mean test accuracy over its seeds is read at fixed fractions of the
reference method's final compute (1/16, 1/4, 1 by default). There it gets a normalised
score (0 = the worst method's final mean on that task, 1 = the best's; below 0 early on is
possible) and a rank among the task's methods (1 = best; a method without a mean over all
its seeds yet ranks last). Over tasks: mean score and mean rank, a figure of the mean rank
over compute, and, from ``CD_MIN_TASKS`` tasks on, the Friedman test and a critical-
difference diagram (Nemenyi, alpha = 0.05) of the final ranks (scipy.stats).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from bench.analysis.curves import anytime_curves, final_points, mean_at, method_kinds
from bench.analysis.plots import PALETTE, _save_atomic, plain_number
from bench.contract.errors import BenchError
from bench.contract.schema import COMPUTE_S, LEARNED, METHOD, TASK, TEST_ACC
from bench.records.rundir import load_run
from bench.records.tables import check_writable, write_text

FRACTIONS = (1 / 16, 1 / 4, 1.0)
CURVE_FRACTIONS = np.geomspace(1 / 64, 1.0, 25)  # the rank-over-compute figure's x
CD_MIN_TASKS = 5
ALPHA = 0.05
SCORE_COLUMNS = ["task", "run", "reference", "spread", METHOD, "kind", "fraction", "compute_s",
                 "acc", "score", "rank"]


def _frac(f: float) -> str:
    return str(Fraction(f).limit_denominator(1000))


def _task_scores(task_key, run, curves, reference, kinds, fractions) -> list[dict]:
    finals = final_points(curves).droplevel(TASK)
    final_mean = finals[TEST_ACC].groupby(level=METHOD).mean()
    if reference not in final_mean.index:
        reference = final_mean.idxmax()  # as the report does for a task without it
    worst, best = final_mean.min(), final_mean.max()
    ref_compute = finals.loc[reference, COMPUTE_S].mean()
    xs = ref_compute * np.asarray(fractions, dtype=float)
    acc = pd.DataFrame({m: mean_at(g, xs) for m, g in curves.groupby(METHOD, sort=True)},
                       index=list(fractions))
    ranks = acc.rank(axis=1, ascending=False, method="average", na_option="bottom")
    rows = []
    for f, x in zip(fractions, xs):
        for m in acc.columns:
            a = acc.loc[f, m]
            score = (a - worst) / (best - worst) if best > worst else (1.0 if a >= best else 0.0)
            rows.append({"task": task_key, "run": run, "reference": reference,
                         "spread": best - worst, METHOD: m,
                         "kind": kinds.get(m, "search"), "fraction": f, "compute_s": x,
                         "acc": a, "score": score if pd.notna(a) else np.nan,
                         "rank": ranks.loc[f, m]})
    return rows


def run_labels(run_dirs) -> list[str]:
    """Each run's name in the comparison: its folder's name, or as many of its trailing
    folders as tell it apart from the others (``x/run``, ``y/run``). The same directory
    named twice (``run``, ``run/``, ``./run``) is refused: it would count its tasks twice."""
    paths = [Path(d).resolve() for d in run_dirs]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            first = run_dirs[paths.index(path)]
            same = f"{first} is named twice" if str(first) == str(run_dirs[i]) else \
                f"{first} and {run_dirs[i]} are the same run directory"
            raise BenchError(f"compare: {same}; name each run once")
    labels = []
    for path in paths:
        k = 1
        while any(other != path and other.parts[-k:] == path.parts[-k:] for other in paths):
            k += 1
        labels.append(str(Path(*path.parts[-k:])))
    return labels


def check_out_dir(out: str | Path) -> None:
    """compare's --out: a directory, or one that can be made, that takes new files;
    checked before anything is read (nothing is made for a refused comparison)."""
    out = Path(out)
    existing = next(p for p in (out, *out.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        where = "" if existing == out else f" ({existing})"
        raise BenchError(f"compare: --out {out}{where} is a file, not a directory")
    check_writable(existing, "compare.md")


def compare_scores(run_dirs, fractions=FRACTIONS) -> pd.DataFrame:
    """The long table (``SCORE_COLUMNS``) of every task of ``run_dirs`` at ``fractions``;
    a task name found in two runs is told apart by its run's name (``run_labels``). Runs
    that count compute in different units are refused (``compare_unit``)."""
    loaded = []
    units = {}
    for label, run_dir in zip(run_labels(run_dirs), run_dirs):
        trials, info = load_run(run_dir)
        units[label] = info.unit
        loaded.append((label, anytime_curves(trials), info.reference,
                       method_kinds(trials)))
    unit = compare_unit(units)
    seen: dict[str, int] = {}
    for _, curves, _, _ in loaded:
        for task in set(curves[TASK]):
            seen[task] = seen.get(task, 0) + 1
    rows = []
    for run, curves, reference, kinds in loaded:
        for task, tc in curves.groupby(TASK, sort=True):
            key = task if seen[task] == 1 else f"{run}:{task}"
            rows += _task_scores(key, run, tc, reference, kinds, fractions)
    if not rows:
        raise BenchError("compare: no task has a scored point in " + ", ".join(map(str, run_dirs)))
    scores = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    scores.attrs["unit"] = unit  # what compute_s counts
    return scores


def compare_unit(units: dict[str, str]) -> str:
    """The one unit every run counts compute in ({run: unit label}); a budget in GPU-seconds
    and one in CPU core-seconds are no fractions of one another: refused."""
    labels = list(dict.fromkeys(units.values()))
    if len(labels) > 1:
        first = {label: run for run, label in reversed(units.items())}
        raise BenchError("compare: the runs count compute in different units ("
                         + ", ".join(f"{first[label]}: {label}" for label in labels)
                         + "); compare runs of one unit")
    return labels[0] if labels else ""


def friedman_nemenyi(scores: pd.DataFrame) -> dict | None:
    """Friedman test and Nemenyi critical difference on the final ranks, over the methods
    present in every task; None with fewer than ``CD_MIN_TASKS`` tasks or 3 methods."""
    final = scores[scores["fraction"] == scores["fraction"].max()]
    table = final.pivot(index="task", columns=METHOD, values="acc")
    present = final.pivot(index="task", columns=METHOD, values="rank").notna().all()
    table = table.loc[:, [m for m in table.columns if present.get(m, False)]]
    n, k = table.shape
    if n < CD_MIN_TASKS or k < 3:
        return None
    values = table.fillna(-np.inf)  # no mean over all seeds at the end: last
    ranks = values.rank(axis=1, ascending=False, method="average")
    statistic, p = stats.friedmanchisquare(*[values[m].to_numpy() for m in values.columns])
    q = stats.studentized_range.ppf(1 - ALPHA, k, np.inf) / np.sqrt(2)
    return {"tasks": n, "methods": k, "statistic": float(statistic), "p": float(p),
            "cd": float(q * np.sqrt(k * (k + 1) / (6 * n))),
            "mean_rank": ranks.mean().sort_values()}


def compare_markdown(scores: pd.DataFrame, test: dict | None, runs, unit: str = "") -> str:
    fractions = sorted(set(scores["fraction"]))
    tasks = list(dict.fromkeys(scores["task"]))
    summary = scores.groupby([METHOD, "fraction"]).agg(
        score=("score", "mean"), rank=("rank", "mean"), tasks=("task", "nunique"),
        scored=("score", "count")).reset_index()
    lines = [f"# Comparison over {len(tasks)} tasks", "",
             "Runs: " + ", ".join(f"`{r}`" for r in runs) + ".", "",
             "Budgets are fractions of each task's reference method's final compute (mean "
             f"over its seeds{'; compute in ' + unit if unit else ''}). Score: the method's "
             "mean test accuracy over all its seeds at that budget, normalised per task (0 = the worst method's final mean, 1 = the "
             "best's). Rank among the task's methods, 1 = best; a method without a mean over "
             "all its seeds at that budget ranks last and has no score (score columns average "
             "over the tasks that have one: n/N when some lack it).", "",
             "| method | kind | tasks | " + " | ".join(f"score @{_frac(f)}" for f in fractions)
             + " | " + " | ".join(f"rank @{_frac(f)}" for f in fractions) + " |",
             "|---|---|---:|" + "---:|" * (2 * len(fractions))]
    kinds = scores.groupby(METHOD)["kind"].first()
    order = summary[summary["fraction"] == fractions[-1]].sort_values("rank")[METHOD]
    for m in order:
        s = summary[summary[METHOD] == m].set_index("fraction")
        cells = []
        for f in fractions:
            sc = s.loc[f]
            cell = "–" if pd.isna(sc["score"]) else f"{sc['score']:.2f}"
            cells.append(cell + (f" ({int(sc['scored'])}/{int(sc['tasks'])})"
                                 if sc["scored"] < sc["tasks"] and sc["scored"] else ""))
        cells += [f"{s.loc[f, 'rank']:.2f}" for f in fractions]
        lines.append(f"| {m} | {kinds[m]} | {int(s['tasks'].max())} | " + " | ".join(cells) + " |")
    lines += ["", "Per task: normalised score at " + ", ".join(_frac(f) for f in fractions)
              + " of the reference's final compute.", "",
              "Spread: best minus worst final mean (points); where it is small, scores are "
              "large and unstable.", "",
              "| task | reference | spread (pp) | " + " | ".join(order) + " |",
              "|---|---|---:|" + "---:|" * len(order)]
    for task in tasks:
        t = scores[scores["task"] == task]
        cells = []
        for m in order:
            v = t[t[METHOD] == m].sort_values("fraction")["score"]
            cells.append(" / ".join("–" if pd.isna(x) else f"{x:.2f}" for x in v) or "")
        lines.append(f"| {task} | {t['reference'].iloc[0]} | {100 * t['spread'].iloc[0]:.2f} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    if test is None:
        lines.append(f"No Friedman test or critical-difference diagram: it needs at least "
                     f"{CD_MIN_TASKS} tasks and 3 methods present in every task.")
    else:
        lines.append(f"Friedman test over {test['tasks']} tasks and the {test['methods']} "
                     f"methods present in every task (final accuracy): chi2 = "
                     f"{test['statistic']:.2f}, p = {test['p']:.3g}. Nemenyi critical "
                     f"difference (alpha = {ALPHA}): {test['cd']:.2f} ranks (cd.png).")
    return "\n".join(lines) + "\n"


def plot_ranks(scores: pd.DataFrame, out_stem: Path) -> list[Path]:
    """Mean rank over tasks against the fraction of the reference's final compute."""
    fig = Figure(figsize=(7.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ranks = scores.groupby([METHOD, "fraction"])["rank"].mean().unstack(METHOD)
    kinds = scores.groupby(METHOD)["kind"].first()
    for i, m in enumerate(ranks.columns):
        ax.plot(ranks.index, ranks[m], color=PALETTE[i % len(PALETTE)], lw=1.8,
                ls="--" if kinds[m] == LEARNED else "-",
                label=m + (" (learned)" if kinds[m] == LEARNED else ""))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(lambda x, _: _frac(x) if x < 1 else plain_number(x))
    ax.set_xticks([f for f in (1 / 64, 1 / 16, 1 / 4, 1) if ranks.index.min() <= f])
    ax.invert_yaxis()
    ax.set_xlabel("budget (fraction of the reference method's final compute, per task)")
    ax.set_ylabel("mean rank over the tasks that ran it (1 = best)")
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


def compare_runs(run_dirs, out: str | Path) -> tuple[str, list[Path]]:
    """Write compare.md, ranks.png/svg and (enough tasks) cd.png/svg into ``out``."""
    if not run_dirs:
        raise BenchError("compare: name at least one run directory")
    check_out_dir(out)
    scores = compare_scores(run_dirs, sorted(set(FRACTIONS) | set(CURVE_FRACTIONS)))
    table = scores[scores["fraction"].isin(FRACTIONS)]
    test = friedman_nemenyi(table)
    text = compare_markdown(table, test, [str(r) for r in run_dirs], scores.attrs["unit"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "compare.md", text)
    paths = [out / "compare.md", *plot_ranks(scores, out / "ranks")]
    if test is not None:
        paths += plot_cd(test, out / "cd")
    return text, paths
