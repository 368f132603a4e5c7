"""Whether training had converged: the training loss along each run, from reports.parquet.

A comparison of tuning methods means little if runs stop while the loss still falls
steeply (the learned methods' selection rules read the end of training). For each task and
method this summarises the runs that train on all N (retrains and learned runs): the
median over runs of the training NLL at 25%, 50%, 75% and 100% of the run (each the mean
of the reports in the tenth of the run before that point, to smooth minibatch noise), and
the median relative drop over the last quarter. The NLL is the epoch's mean data term
(``train_nll`` in a report's metrics) where recorded, else the report's ``train_loss``
(the last step's loss with penalties; a marginal-likelihood run's penalty jumps when its
precisions are re-estimated). Pure pandas: no torch.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd

from bench.contract import schema as S

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
WINDOW = 0.1  # the share of a run averaged at each fraction


def _nll(metrics, train_loss):
    if isinstance(metrics, str):
        value = json.loads(metrics).get("train_nll")
        if value is not None:
            return value
    return train_loss


def loss_profile(reports: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, method): runs, median loss at each fraction, last-quarter drop."""
    kinds = trials[[S.TASK, S.METHOD, S.SEED, S.TRIAL_ID, S.KIND, S.STATUS]]
    data = reports.merge(kinds, on=[S.TASK, S.METHOD, S.SEED, S.TRIAL_ID])
    data = data[data[S.KIND].isin([S.RETRAIN, S.LEARNED]) & (data[S.STATUS] == S.OK)].copy()
    data["nll"] = [_nll(m, loss) for m, loss in zip(data[S.METRICS], data[S.TRAIN_LOSS])]
    data = data[data["nll"].notna()]
    rows = []
    for (task, method), group in data.groupby([S.TASK, S.METHOD], sort=True):
        per_run = []
        for _, run in group.groupby([S.SEED, S.TRIAL_ID]):
            steps = run[S.STEP].to_numpy(float)
            loss = run["nll"].to_numpy(float)
            total = steps.max()
            values = []
            for f in FRACTIONS:
                inside = (steps > (f - WINDOW) * total) & (steps <= f * total)
                values.append(loss[inside].mean() if inside.any() else np.nan)
            per_run.append(values)
        arr = np.array(per_run)
        with warnings.catch_warnings():  # a fraction no run reached (short runs): NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(arr, axis=0)
            drop = np.nanmedian((arr[:, 2] - arr[:, 3]) / np.abs(arr[:, 2]))
        rows.append({S.TASK: task, S.METHOD: method, "runs": len(per_run),
                     **{f"loss_{int(f * 100)}": v for f, v in zip(FRACTIONS, med)},
                     "last_quarter_drop": drop})
    return pd.DataFrame(rows)


def convergence_markdown(reports: pd.DataFrame, trials: pd.DataFrame) -> str:
    """The profile as Markdown tables, one per task ('' if no report has a loss)."""
    profile = loss_profile(reports, trials)
    if profile.empty:
        return ""
    lines = ["## Training convergence", "",
             "Training NLL of the runs on all N (retrains and learned runs): median over runs "
             "of the mean NLL in the tenth of the run before 25%, 50%, 75% and 100% of its "
             "steps, and the median relative drop over the last quarter; a small drop: "
             "training had flattened. The epoch's mean data term where the records hold it "
             "(`train_nll`), else the last step's loss with its penalty (a marginal-likelihood "
             "run's penalty jumps when its precisions are re-estimated late in the run).", ""]
    for task, group in profile.groupby(S.TASK, sort=True):
        lines += [f"### {task}", "",
                  "| method | runs | loss at 25% | 50% | 75% | 100% | last-quarter drop |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in group.itertuples(index=False):
            r = row._asdict()
            cells = [_cell(r[f"loss_{int(f * 100)}"], "{:.3f}") for f in FRACTIONS]
            lines.append(f"| {r[S.METHOD]} | {r['runs']} | " + " | ".join(cells) + " | "
                         + _cell(100 * r["last_quarter_drop"], "{:.1f}%") + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(value: float, spec: str) -> str:
    return "–" if value is None or math.isnan(value) else spec.format(value)
