"""The Markdown report of a run: per task, final test accuracy with its uncertainty and the
paired comparison with the reference method, compute to target, and per-seed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.analysis.curves import (_BASE, _require, anytime_curves, compute_to_target,
                                   final_points, method_kinds, sweep_best)
from bench.analysis.stats import (CONFIDENCE, RESAMPLES, WILCOXON_MIN_PAIRS, mean_interval,
                                  wilcoxon_p)
from bench.contract.schema import (FAILED, INFO, KIND, LEARNED, METHOD, OK, OVER_BUDGET,
                                   PRUNED, REPORT_FILE, SEED, STATUS, TASK, TEST_ACC)
from bench.records.rundir import default_reference
from bench.records.tables import write_text

STATUSES = (OK, FAILED, OVER_BUDGET, PRUNED)
PER_SEED_MAX = 8  # more seeds than this: no per-seed table (it would not fit a page)


def _fmt(x, spec: str) -> str:
    return "–" if x is None or pd.isna(x) else format(x, spec)


def _interval(low, high, spec: str, scale: float = 1.0) -> str:
    if pd.isna(low):
        return ""
    hi = "never" if np.isinf(high) else format(scale * high, spec)
    return f" [{format(scale * low, spec)}, {hi}]"


def paired_differences(finals: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per method: its final test accuracy minus the reference's on each seed both ran
    (same seed, same data subset). ``finals``: one task's rows of ``final_points``, indexed
    by (method, seed). Columns: pairs, mean, low, high (95% bootstrap interval), p
    (Wilcoxon signed-rank, NaN below ``WILCOXON_MIN_PAIRS`` pairs)."""
    acc = finals[TEST_ACC].unstack(METHOD)
    rows = {}
    for method in acc.columns:
        d = (acc[method] - acc[reference]).dropna().to_numpy(float)
        low, high = mean_interval(d[:, None]) if len(d) else (np.full(1, np.nan),) * 2
        rows[method] = {"pairs": len(d), "mean": d.mean() if len(d) else np.nan,
                        "low": float(low[0]), "high": float(high[0]), "p": wilcoxon_p(d)}
    return pd.DataFrame.from_dict(rows, orient="index")


def _pick_reference(task: str, wanted: str | None, curves: pd.DataFrame) -> tuple[str, str]:
    """The task's reference and how it was chosen (a line of the report)."""
    finals = curves.groupby([METHOD, SEED])[TEST_ACC].last().groupby(METHOD).mean()
    if wanted in finals.index:
        return wanted, f"Reference: {wanted}."
    best = finals.idxmax()
    why = f"no curve for {wanted!r} in this task" if wanted else "the run names no reference"
    return best, f"Reference: {best} ({why}: the method with the best final accuracy)."


def _task_report(task: str, trials: pd.DataFrame, curves: pd.DataFrame,
                 wanted: str | None, unit: str = "") -> list[str]:
    lines = [f"## {task}", ""]
    methods = sorted(set(trials[METHOD]))
    counts = trials.groupby([METHOD, STATUS]).size().unstack(fill_value=0)
    kinds = method_kinds(trials)
    if curves.empty:
        return lines + ["No method has a scored point yet.", "",
                        "| method | " + " | ".join(STATUSES) + " |",
                        "|---|" + "---:|" * len(STATUSES)] + [
            f"| {m} | " + " | ".join(str(counts.loc[m].get(s, 0)) for s in STATUSES) + " |"
            for m in methods] + [""]
    reference, why = _pick_reference(task, wanted, curves)
    targets = compute_to_target(curves, reference=reference).set_index(METHOD)
    finals = final_points(curves).droplevel(TASK)
    paired = paired_differences(finals, reference)
    oracle = sweep_best(trials).droplevel(TASK).groupby(METHOD).mean() if (
        trials[KIND] == LEARNED).any() else pd.Series(dtype=float)
    lines += [f"{why} Target: {100 * targets['target'].iloc[0]:.2f}% (its final mean "
              "minus 1 point).", "",
              f"| method | kind | seeds | test acc (%) | Δ vs {reference} (pp) | pairs "
              "| Wilcoxon p | best of sweep (%) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in methods:
        if m not in targets.index:
            lines.append(f"| {m} | {kinds[m]} | 0 | – | – | – | – | – |")
            continue
        acc = finals.loc[m, TEST_ACC].to_numpy(float)
        low, high = mean_interval(acc[:, None])
        pr = paired.loc[m]
        delta = ("0 (reference)" if m == reference else
                 f"{_fmt(100 * pr['mean'], '+.2f')}{_interval(pr['low'], pr['high'], '+.2f', 100)}")
        p = "–" if m == reference else _fmt(pr["p"], ".3f")
        best = f"{100 * oracle[m]:.2f}" if m in oracle.index else "–"
        lines.append(f"| {m} | {kinds[m]} | {len(acc)} | {100 * acc.mean():.2f}"
                     f"{_interval(low[0], high[0], '.2f', 100)} | {delta} | "
                     f"{int(pr['pairs']) if m != reference else '–'} | {p} | {best} |")
    unit = f" ({unit})" if unit else ""
    lines += ["", f"| method | final compute{unit} | compute to target{unit} | "
              f"ratio to {reference} | "
              + " | ".join(STATUSES) + " |", "|---|---:|---:|---:|" + "---:|" * len(STATUSES)]
    for m in methods:
        status = " | ".join(str(counts.loc[m].get(s, 0)) for s in STATUSES)
        if m not in targets.index:
            lines.append(f"| {m} | – | – | – | {status} |")
            continue
        t = targets.loc[m]
        reach = _fmt(t["compute_to_target_s"], ",.0f")
        if pd.notna(t["compute_to_target_s"]):
            reach += _interval(t["compute_to_target_low"], t["compute_to_target_high"], ",.0f")
        lines.append(f"| {m} | {t['final_compute_s']:,.0f} | {reach} | "
                     f"{_fmt(t['ratio_to_reference'], '.3f')} | {status} |")
    return lines + [""] + _per_seed(finals, reference) + [""]


def _per_seed(finals: pd.DataFrame, reference: str) -> list[str]:
    """Each method's final accuracy on each of the reference's seeds, with the difference."""
    acc = finals[TEST_ACC].unstack(SEED)
    seeds = [s for s in acc.columns if pd.notna(acc.loc[reference, s])]
    if len(seeds) > PER_SEED_MAX:
        return []
    lines = ["Per seed: final test accuracy (%), and the difference from the reference (pp).",
             "", "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---:|" * len(seeds)]
    for m in acc.index:
        if acc.loc[m, seeds].isna().all():
            continue  # none of the reference's seeds (e.g. published BO traces)
        cells = []
        for s in seeds:
            a, r = acc.loc[m, s], acc.loc[reference, s]
            cells.append("–" if pd.isna(a) else f"{100 * a:.2f}" if m == reference else
                         f"{100 * a:.2f} ({100 * (a - r):+.2f})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def report_markdown(trials: pd.DataFrame, reference: str | None = None,
                    unit: str = "resource-seconds") -> str:
    """The numbers behind the trade-off plot, readable without it. ``reference``: the label
    compared against (default: ``bench.records.rundir.default_reference``)."""
    _require(trials, _BASE, "report_markdown")
    reference = reference or default_reference(trials)
    curves = anytime_curves(trials)
    pct = round(100 * CONFIDENCE)
    lines = [
        "# Accuracy vs compute", "",
        f"Compute is in {unit}: a search method is charged every trial and the retraining "
        "of each incumbent on all N; a learned method every run of its sweep.", "",
        "Test accuracy: class-balanced, of each seed's final pick (search: the incumbent by "
        "validation NLL, retrained on all N; learned: the run of the sweep with the lowest "
        f"objective); mean over seeds with a {pct}% bootstrap interval over seeds (percentile, "
        f"{RESAMPLES} resamples; with few seeds it is too narrow rather than too wide). "
        "Δ: the paired difference from the reference on each seed both ran (a seed fixes "
        f"the data subset), mean and {pct}% interval, in percentage points; Wilcoxon "
        f"signed-rank p from {WILCOXON_MIN_PAIRS} pairs on (fewer pairs cannot reach "
        "p < 0.05). Best of sweep (learned methods): the mean over seeds of the best test "
        "accuracy among the sweep's runs, what an oracle would pick; its gap to the test "
        "accuracy is what the method's own selection rule costs.", "",
        "Final compute: at each seed's last point, mean over seeds. Compute to target: the "
        "compute from which the mean over all seeds stays within 1 point of the reference's "
        "final mean to the end of the curve (–: it ends below, or never covers all seeds); "
        f"in brackets a {pct}% interval over resampled seeds (never: some resamples end below). "
        "Status columns count every run (search, retrain and learned).", ""]
    for task in sorted(set(trials[TASK])):
        lines += _task_report(task, trials[trials[TASK] == task], curves[curves[TASK] == task],
                              reference, unit)
    return "\n".join(lines)


def clean_validation_note(trials: pd.DataFrame) -> str:
    """What the methods of tasks with label noise saw, where their records say the search
    split's validation labels were kept clean (``label_noise_clean_validation``)."""
    infos = [json.loads(i) for i in trials[INFO].dropna() if isinstance(i, str)]
    if not any(i.get("label_noise_clean_validation") for i in infos):
        return ""
    return ("Label noise corrupted only the search split's training 80% of each noisy task; "
            "the validation 20% kept their true labels (Li & Zhang's protocol). Search "
            "trials trained on the noisy 80% and were selected on the clean 20%; retrains on "
            "all N and every learned run trained on both, the clean 20% as training data, "
            "never as a selection signal.")


def report_run(run_dirs, write: bool = True, out: str | Path | None = None) -> str:
    """The report of a run directory, or of several merged (``bench.analysis.merge``), with
    its reference and unit; written to report.md in ``out``, else the first directory,
    unless ``write`` is False."""
    from bench.analysis.convergence import convergence_markdown
    from bench.analysis.merge import load_runs, merged_note, output_dir

    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    merged = load_runs(run_dirs, "report")
    target = output_dir(run_dirs, out, "report", REPORT_FILE) if write else None
    text = report_markdown(merged.trials, merged.info.reference, merged.info.unit)
    for note in (merged_note(merged), clean_validation_note(merged.trials)):
        if note:
            head, _, rest = text.partition("\n\n")
            text = f"{head}\n\n{note}\n\n{rest}"
    convergence = convergence_markdown(merged.reports, merged.trials)
    if convergence:
        text += "\n\n" + convergence
    if write:
        target.mkdir(parents=True, exist_ok=True)
        write_text(target / REPORT_FILE, text + "\n")
    return text
