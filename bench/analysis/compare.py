"""``bench compare RUN_DIR...``: one summary over every task of one or several runs.

Per task, each method's mean test accuracy over its seeds is read at fixed fractions of the
reference method's final compute (1/16, 1/4, 1 by default). There it gets a normalised
regret (``bench.analysis.regret``: 0 = the task's best configuration, 1 = its median one;
a task whose range is below 0.5 points is a tie and left out) and a rank among the task's
methods (1 = best; a method without a mean over all its seeds yet ranks last). Over tasks:
mean regret with a bootstrap interval over tasks and mean rank; the anytime figure (both
against the budget), performance profiles at the full budget and, from ``CD_MIN_TASKS``
tasks on, the Friedman test and a critical-difference diagram (Nemenyi, alpha = 0.05) of
the final ranks (scipy.stats).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.analysis.compare_plots import frac, plot_anytime, plot_cd, plot_profile
from bench.analysis.curves import anytime_curves, final_points, mean_at, method_kinds
from bench.analysis.regret import (PROFILE_TAUS, TIE_FLOOR, mean_over_tasks,
                                   performance_profile, task_anchors)
from bench.contract.errors import BenchError
from bench.contract.schema import COMPUTE_S, METHOD, TASK, TEST_ACC
from bench.records.rundir import load_run, read_metadata
from bench.records.tables import check_writable, write_text

FRACTIONS = (1 / 16, 1 / 4, 1.0)
CURVE_FRACTIONS = np.geomspace(1 / 64, 1.0, 25)  # the anytime figure's x
CD_MIN_TASKS = 5
ALPHA = 0.05
SCORE_COLUMNS = ["task", "run", "reference", "anchor", "best", "low", METHOD, "kind",
                 "fraction", "compute_s", "acc", "regret", "rank"]


def _task_scores(task_key, run, curves, task_trials, reference, kinds, fractions,
                 record_sets) -> list[dict]:
    finals = final_points(curves).droplevel(TASK)
    if reference not in set(finals.index.get_level_values(METHOD)):
        reference = finals.groupby(level=METHOD)[TEST_ACC].mean().idxmax()  # as report
    anchors = task_anchors(curves[TASK].iloc[0], task_trials, record_sets)
    ref_compute = finals.loc[reference, COMPUTE_S].mean()
    xs = ref_compute * np.asarray(fractions, dtype=float)
    acc = pd.DataFrame({m: mean_at(g, xs) for m, g in curves.groupby(METHOD, sort=True)},
                       index=list(fractions))
    ranks = acc.rank(axis=1, ascending=False, method="average", na_option="bottom")
    rows = []
    for f, x in zip(fractions, xs):
        for m in acc.columns:
            rows.append({"task": task_key, "run": run, "reference": reference,
                         "anchor": anchors.source, "best": anchors.best, "low": anchors.low,
                         METHOD: m, "kind": kinds.get(m, "search"), "fraction": f,
                         "compute_s": x, "acc": acc.loc[f, m],
                         "regret": float(anchors.regret(acc.loc[f, m])),
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
        records = str(read_metadata(run_dir).get("records") or "").split(",")
        loaded.append((label, trials, anytime_curves(trials), info.reference,
                       method_kinds(trials), records))
    unit = compare_unit(units)
    seen: dict[str, int] = {}
    for _, _, curves, _, _, _ in loaded:
        for task in set(curves[TASK]):
            seen[task] = seen.get(task, 0) + 1
    rows = []
    for run, trials, curves, reference, kinds, records in loaded:
        for task, tc in curves.groupby(TASK, sort=True):
            key = task if seen[task] == 1 else f"{run}:{task}"
            rows += _task_scores(key, run, tc, trials[trials[TASK] == task], reference,
                                 kinds, fractions, records)
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


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (method, fraction): mean regret over the non-tie tasks with a value, its 95%
    bootstrap interval over tasks and count; mean rank over all the method's tasks with its
    interval; ``tasks`` the method's tasks, ``regret_tasks`` its non-tie tasks."""
    rows = []
    for (m, f), g in scores.groupby([METHOD, "fraction"], sort=True):
        regret, r_low, r_high, n = mean_over_tasks(g["regret"])
        rank, k_low, k_high, _ = mean_over_tasks(g["rank"])
        rows.append({METHOD: m, "fraction": f, "kind": g["kind"].iloc[0],
                     "tasks": g["task"].nunique(),
                     "regret_tasks": int((g["best"] - g["low"] >= TIE_FLOOR).sum()),
                     "regret": regret, "regret_low": r_low, "regret_high": r_high,
                     "regret_n": n, "rank": rank, "rank_low": k_low, "rank_high": k_high})
    return pd.DataFrame(rows)


def _interval(mean, low, high) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.2f}" + ("" if pd.isna(low) else f" [{low:.2f}, {high:.2f}]")


def final_profile(scores: pd.DataFrame, taus=PROFILE_TAUS) -> pd.DataFrame:
    """The performance profile at the full budget (``bench.analysis.regret``)."""
    final = scores[scores["fraction"] == scores["fraction"].max()]
    return performance_profile(final.pivot(index="task", columns=METHOD, values="regret"),
                               taus)


def _profile_tasks(scores: pd.DataFrame) -> dict:
    final = scores[scores["fraction"] == scores["fraction"].max()]
    return final.groupby(METHOD)["regret"].count().to_dict()


def compare_markdown(scores: pd.DataFrame, test: dict | None, runs, unit: str = "") -> str:
    fractions = sorted(set(scores["fraction"]))
    tasks = list(dict.fromkeys(scores["task"]))
    per_task = scores.drop_duplicates("task").set_index("task")
    ties = [t for t in tasks if not per_task.loc[t, "best"] - per_task.loc[t, "low"]
            >= TIE_FLOOR]
    summary = summarise(scores)
    order = list(summary[summary["fraction"] == fractions[-1]].sort_values("rank")[METHOD])
    sources = per_task["anchor"].value_counts()
    lines = [f"# Comparison over {len(tasks)} tasks", "",
             "Runs: " + ", ".join(f"`{r}`" for r in runs) + ".", "",
             "Budgets are fractions of each task's reference method's final compute (mean "
             f"over its seeds{'; compute in ' + unit if unit else ''}). Regret: normalised "
             "per task, (best - acc) / (best - median), where acc is the method's mean test "
             "accuracy over all its seeds at that budget, best and median the task's best "
             "and median configuration (on each seed, averaged over seeds) from its "
             "configuration table where it has one, else from all its runs "
             "(docs/methods.md#normalised-regret): 0 = the best configuration, 1 = a median "
             f"one. Tasks whose best and median lie less than {100 * TIE_FLOOR:g} points "
             "apart are ties: no regret, left out of the means. Mean over tasks with a 95% "
             "bootstrap interval over tasks (percentile); n/N where some of the method's "
             "N non-tie tasks have no mean over all its seeds at that budget. Rank among the "
             "task's methods, 1 = best, over all its tasks; a method without a mean over all "
             "its seeds at that budget ranks last.", "",
             "Anchors: " + ", ".join(f"{n} task{'s' if n > 1 else ''} from the {src}"
                                     for src, n in sources.items()) + "; "
             + (f"{len(ties)} tie{'s' if len(ties) > 1 else ''} left out of the regret "
                f"means ({', '.join(ties)})." if ties else "no ties."), "",
             "| method | kind | tasks | " + " | ".join(f"regret @{frac(f)}" for f in fractions)
             + " | " + " | ".join(f"rank @{frac(f)}" for f in fractions) + " |",
             "|---|---|---:|" + "---:|" * (2 * len(fractions))]
    for m in order:
        s = summary[summary[METHOD] == m].set_index("fraction")
        cells = []
        for f in fractions:
            r = s.loc[f]
            cells.append(_interval(r["regret"], r["regret_low"], r["regret_high"])
                         + (f" ({int(r['regret_n'])}/{int(r['regret_tasks'])})"
                            if 0 < r["regret_n"] < r["regret_tasks"] else ""))
        cells += [f"{s.loc[f, 'rank']:.2f}" for f in fractions]
        lines.append(f"| {m} | {s['kind'].iloc[0]} | {int(s['tasks'].max())} | "
                     + " | ".join(cells) + " |")
    profile = final_profile(scores)
    lines += ["", f"Performance profile at the full budget (Dolan and Moré 2002, on "
              "normalised regret): the share of a method's non-tie tasks on which its regret "
              "is within tau of the best method's on that task (profile.png).", "",
              "| method | tasks | " + " | ".join(f"tau = {t:g}" for t in profile.index)
              + " |", "|---|---:|" + "---:|" * len(profile.index)]
    counts = _profile_tasks(scores)
    for m in order:
        lines.append(f"| {m} | {counts.get(m, 0)} | " + " | ".join(
            "–" if pd.isna(v) else f"{v:.2f}" for v in profile[m]) + " |")
    lines += ["", "Per task: normalised regret at " + ", ".join(frac(f) for f in fractions)
              + " of the reference's final compute; best and median in percent.", "",
              "| task | reference | anchors from | best (%) | median (%) | " + " | ".join(order)
              + " |", "|---|---|---|---:|---:|" + "---:|" * len(order)]
    for task in tasks:
        t = scores[scores["task"] == task]
        head = per_task.loc[task]
        cells = []
        for m in order:
            v = t[t[METHOD] == m].sort_values("fraction")["regret"]
            cells.append("tie" if task in ties and len(v) else
                         " / ".join("–" if pd.isna(x) else f"{x:.2f}" for x in v))
        lines.append(f"| {task} | {head['reference']} | {head['anchor']} | "
                     f"{100 * head['best']:.2f} | {100 * head['low']:.2f} | "
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


def compare_runs(run_dirs, out: str | Path) -> tuple[str, list[Path]]:
    """Write compare.md, anytime.png/svg, profile.png/svg and (enough tasks) cd.png/svg
    into ``out``."""
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
    paths = [out / "compare.md", *plot_anytime(summarise(scores), out / "anytime"),
             *plot_profile(final_profile(table, np.linspace(0, 2, 201)), out / "profile",
                           _profile_tasks(table))]
    if test is not None:
        paths += plot_cd(test, out / "cd")
    return text, paths
