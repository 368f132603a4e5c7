"""Accuracy-vs-compute curves from a run's records (METHODS.md section 4), and the report.

Pure pandas/numpy, so a finished run can be analysed anywhere, without torch or Ray.
Accuracies are fractions in [0, 1]; compute is resource-seconds (``RESOURCE_S``).
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.schema import (
    COMPUTE_S, ENDED_S, FAILED, K, KIND, LEARNED, METHOD, OBJECTIVE, OK, OVER_BUDGET, PRUNED,
    RESOURCE_S, RETRAIN, RETRAIN_OF, SEARCH, SEED, STATUS, TASK, TEST_ACC, TEST_NLL, TRIAL_ID,
    VAL_NLL,
)

CURVE_COLUMNS = [TASK, METHOD, SEED, K, COMPUTE_S, TEST_ACC, TEST_NLL, TRIAL_ID]
AGGREGATE_COLUMNS = [TASK, METHOD, COMPUTE_S, "mean", "low", "high", "seeds"]
BOOTSTRAP_COLUMNS = [TASK, METHOD, SEED, K, COMPUTE_S, "mean", "low", "high", "complete"]
TARGET_COLUMNS = [TASK, METHOD, "final_acc", "final_compute_s", "compute_to_target_s",
                  "ratio_to_reference"]
# From this many seeds the band is the 2.5/97.5 percentile range; with fewer, percentiles of
# a handful of values mean little, so the band is the min/max over seeds.
PERCENTILE_MIN_SEEDS = 5
# Slack on "within tolerance of the target" so that 0.8 - 0.01 == 0.79 in floating point.
_EPS = 1e-12
_STATUSES = (OK, FAILED, OVER_BUDGET, PRUNED)
_BASE = [TASK, METHOD, SEED, TRIAL_ID, KIND, STATUS, ENDED_S, RESOURCE_S]


def _require(df: pd.DataFrame, columns, what: str) -> None:
    """Fail with the user's words, not a KeyError deep inside pandas."""
    if df is None or len(df) == 0:
        raise BenchError(f"{what}: the table is empty")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BenchError(f"{what}: missing column(s) {', '.join(missing)}")


def _key(value) -> str:
    """Trial ids may round-trip through parquet as floats (NaN in other rows); match as text."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _ordered(runs: pd.DataFrame) -> pd.DataFrame:
    """Completion order, as a user would have seen the runs finish."""
    return runs.sort_values([ENDED_S, TRIAL_ID], kind="stable")


def _cost(value) -> float:
    """A run without a recorded cost is charged nothing rather than poisoning every sum."""
    return 0.0 if pd.isna(value) else float(value)


def _retrains(group: pd.DataFrame) -> dict[str, dict]:
    """Usable retrain per search trial: OK with a test score; the earliest if repeated."""
    ok = group[(group[KIND] == RETRAIN) & (group[STATUS] == OK) & group[TEST_ACC].notna()]
    latest_first = _ordered(ok).to_dict("records")[::-1]
    return {_key(r[RETRAIN_OF]): r for r in latest_first}  # the earliest overwrites the rest


def _point(rows, group_key, k, compute, scored, incumbent):
    rows.append(dict(zip(CURVE_COLUMNS, (*group_key, k, compute, scored[TEST_ACC],
                                         scored[TEST_NLL], incumbent[TRIAL_ID]))))


def _selection(group: pd.DataFrame) -> str:
    """What picks a search incumbent: validation NLL, or the method's own selection score
    (``objective``, lower is better) where its search runs carry one (e.g. minus CLML)."""
    search = group[group[KIND] == SEARCH]
    return OBJECTIVE if OBJECTIVE in group and search[OBJECTIVE].notna().any() else VAL_NLL


def _search_curve(group: pd.DataFrame, group_key, rows: list) -> None:
    """Charge each incumbent's retrain on top of the search so far, as the DE-ELBo study does."""
    retrains = _retrains(group)
    spent, best, score = 0.0, None, _selection(group)
    for k, t in enumerate(_ordered(group[group[KIND] == SEARCH]).to_dict("records"), start=1):
        spent += _cost(t[RESOURCE_S])
        if t[STATUS] == OK and pd.notna(t[score]) and (best is None or t[score] < best[score]):
            best = t
        retrain = retrains.get(_key(best[TRIAL_ID])) if best is not None else None
        if retrain is not None:
            _point(rows, group_key, k, spent + _cost(retrain[RESOURCE_S]), retrain, best)


def _learned_curve(group: pd.DataFrame, group_key, rows: list) -> None:
    """A learned method's runs score themselves on the test set; its own objective selects."""
    spent, best = 0.0, None
    for k, t in enumerate(_ordered(group[group[KIND] == LEARNED]).to_dict("records"), start=1):
        spent += _cost(t[RESOURCE_S])
        if t[STATUS] == OK and pd.notna(t[OBJECTIVE]) and (best is None or t[OBJECTIVE] < best[OBJECTIVE]):
            best = t
        if best is not None:
            _point(rows, group_key, k, spent, best, best)


def anytime_curves(trials: pd.DataFrame) -> pd.DataFrame:
    """What a user holds after each completed run: one curve per (task, method, seed).

    Ties in validation NLL (or objective) keep the earlier incumbent. ``K`` counts completed
    runs of any status, so a curve may skip k where no incumbent (or its retrain) exists yet.
    """
    _require(trials, _BASE, "anytime_curves")
    kinds = set(trials[KIND].dropna())
    _require(trials, [VAL_NLL, RETRAIN_OF, TEST_ACC, TEST_NLL] if SEARCH in kinds else [], "anytime_curves")
    _require(trials, [OBJECTIVE, TEST_ACC, TEST_NLL] if LEARNED in kinds else [], "anytime_curves")
    rows: list[dict] = []
    for key, group in trials.groupby([TASK, METHOD, SEED], sort=True, dropna=False):
        has_search, has_learned = (group[KIND] == SEARCH).any(), (group[KIND] == LEARNED).any()
        if has_search and has_learned:
            raise BenchError(f"method {key[1]!r} of task {key[0]!r} has both search and learned runs")
        if has_search:
            _search_curve(group, key, rows)
        elif has_learned:
            _learned_curve(group, key, rows)
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _step_values(curve: pd.DataFrame, xs: np.ndarray) -> np.ndarray:
    """Right-continuous step function of one seed's curve; NaN before its first point.

    Compute is not monotone in k (a new incumbent can have a cheaper retrain), so the value
    at budget x is that of the latest k whose compute fits in x.
    """
    by_compute = curve.sort_values([COMPUTE_S, K], kind="stable")
    latest_k = np.maximum.accumulate(by_compute[K].to_numpy())
    idx = np.searchsorted(by_compute[COMPUTE_S].to_numpy(float), xs, side="right") - 1
    out = np.full(len(xs), np.nan)
    acc_by_k = curve.set_index(K)[TEST_ACC]
    out[idx >= 0] = acc_by_k.loc[latest_k[idx[idx >= 0]]].to_numpy(float)
    return out


def _aggregate_at(method_curves: pd.DataFrame, xs: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and band over the seeds that have started at each x."""
    vals = np.vstack([_step_values(g, xs) for _, g in method_curves.groupby(SEED, sort=True)])
    seeds = (~np.isnan(vals)).sum(axis=0)
    wide = seeds >= PERCENTILE_MIN_SEEDS
    with warnings.catch_warnings():  # before any seed's first point a column is all NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        pct = np.nanpercentile(vals, [2.5, 97.5], axis=0)
        return {"mean": np.nanmean(vals, axis=0),
                "low": np.where(wide, pct[0], np.nanmin(vals, axis=0)),
                "high": np.where(wide, pct[1], np.nanmax(vals, axis=0)),
                "seeds": seeds, "all_seeds": vals.shape[0]}


def aggregate_curves(curves: pd.DataFrame, points: int = 200) -> pd.DataFrame:
    """Seeds stop at different computes, so compare them on one log grid per (task, method).

    The grid spans the smallest to the largest compute of any point of the method's seeds.
    Band: min/max over the started seeds, or their 2.5/97.5 percentiles from
    ``PERCENTILE_MIN_SEEDS`` (5) started seeds on.
    """
    _require(curves, CURVE_COLUMNS[:-1], "aggregate_curves")
    if points < 2:
        raise BenchError(f"aggregate_curves: points must be at least 2, got {points}")
    if (curves[COMPUTE_S] <= 0).any():
        raise BenchError("aggregate_curves: compute must be positive for a log-spaced grid")
    frames = []
    for (task, method), g in curves.groupby([TASK, METHOD], sort=True):
        lo, hi = g[COMPUTE_S].min(), g[COMPUTE_S].max()
        xs = np.geomspace(lo, hi, points)
        xs[0], xs[-1] = lo, hi
        xs = np.unique(xs)
        agg = _aggregate_at(g, xs)
        frames.append(pd.DataFrame({TASK: task, METHOD: method, COMPUTE_S: xs,
                                    **{c: agg[c] for c in ("mean", "low", "high", "seeds")}}))
    return pd.concat(frames, ignore_index=True)[AGGREGATE_COLUMNS]


def _bootstrap_candidates(group: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """OK search trials with a retrain, best validation NLL (or selection score) first (ties:
    earlier completion)."""
    retrains, score = _retrains(group), _selection(group)
    ok = group[(group[KIND] == SEARCH) & (group[STATUS] == OK) & group[score].notna()]
    ok = ok.sort_values([score, ENDED_S, TRIAL_ID], kind="stable")
    keep = [_key(t) in retrains for t in ok[TRIAL_ID]]
    cand = ok[keep].assign(
        _retrain_s=[_cost(retrains[_key(t)][RESOURCE_S]) for t in ok[TRIAL_ID][keep]],
        _acc=[float(retrains[_key(t)][TEST_ACC]) for t in ok[TRIAL_ID][keep]],
        _search_s=[_cost(v) for v in ok[RESOURCE_S][keep]])
    return cand, bool(all(keep))


def _bootstrap_k(cand: pd.DataFrame, k: int, draws: int, rng: np.random.Generator):
    """Candidates are sorted best-first, so a subset's winner is its smallest index."""
    n = len(cand)
    picks = np.arange(n)[None, :] if k == n else np.argsort(rng.random((draws, n)), axis=1)[:, :k]
    winner = picks.min(axis=1)
    compute = cand["_search_s"].to_numpy()[picks].sum(axis=1) + cand["_retrain_s"].to_numpy()[winner]
    acc = cand["_acc"].to_numpy()[winner]
    low, high = np.percentile(acc, [2.5, 97.5])
    return compute.mean(), acc.mean(), low, high


def grid_bootstrap(trials: pd.DataFrame, method: str = "grid", draws: int = 500, seed: int = 0,
                   *, by_seed: bool = False) -> pd.DataFrame:
    """The DE-ELBo study's subset bootstrap: what a k-configuration grid would have given.

    Each (task, seed) gets its own Generator, seeded from ``seed`` and the (task, seed) names,
    so adding a task or seed to a suite leaves the others' numbers unchanged. At k = K the
    only subset is the whole grid, computed once, so it equals the full grid exactly.
    ``complete`` is False where some OK search trial has no retrain and was left out.
    With ``by_seed`` one row per (task, seed, k); otherwise per (task, k) the mean over seeds
    of the per-seed compute, mean, low and high, with ``seeds`` counted and no SEED column.
    """
    _require(trials, _BASE + [VAL_NLL, RETRAIN_OF, TEST_ACC], "grid_bootstrap")
    if draws < 1:
        raise BenchError(f"grid_bootstrap: draws must be at least 1, got {draws}")
    mine = trials[trials[METHOD] == method]
    if mine.empty:
        raise BenchError(f"grid_bootstrap: no runs of method {method!r}")
    rows = []
    for (task, s), group in mine.groupby([TASK, SEED], sort=True):
        cand, complete = _bootstrap_candidates(group)
        rng = np.random.default_rng([seed, zlib.crc32(f"{task}\0{s}".encode())])
        for k in range(1, len(cand) + 1):
            stats = _bootstrap_k(cand, k, draws, rng)
            rows.append(dict(zip(BOOTSTRAP_COLUMNS, (task, method, s, k, *stats, complete))))
    per_seed = pd.DataFrame(rows, columns=BOOTSTRAP_COLUMNS)
    if by_seed:
        return per_seed
    return (per_seed.groupby([TASK, METHOD, K], sort=True)
            .agg(**{COMPUTE_S: (COMPUTE_S, "mean"), "mean": ("mean", "mean"),
                    "low": ("low", "mean"), "high": ("high", "mean"),
                    "seeds": (SEED, "nunique"), "complete": ("complete", "all")})
            .reset_index())


def _finals(curves: pd.DataFrame) -> pd.DataFrame:
    """Each seed's last point: what the method delivered when it stopped."""
    last = curves.sort_values(K, kind="stable").groupby([TASK, METHOD, SEED], sort=True).tail(1)
    return last.sort_values([TASK, METHOD, SEED], kind="stable")


def _method_targets(curves: pd.DataFrame, method: str) -> dict:
    """Mean curve evaluated exactly at every compute where it can change."""
    g = curves[curves[METHOD] == method]
    xs = np.unique(g[COMPUTE_S].to_numpy(float))
    agg = _aggregate_at(g, xs)
    final = _finals(g)
    return {"xs": xs, "mean": agg["mean"], "all": agg["seeds"] == agg["all_seeds"],
            "final_acc": agg["mean"][-1], "final_compute_s": final[COMPUTE_S].mean()}


def compute_to_target(curves: pd.DataFrame, reference: str = "grid",
                      tolerance: float = 0.01) -> pd.DataFrame:
    """How much compute each method needs to match the reference (METHODS.md section 4).

    Target per task: the reference's mean curve at its last point, i.e. the mean over seeds
    of each seed's final test accuracy. A method reaches it at the smallest compute where
    its mean curve is >= target - ``tolerance`` (absolute; 0.01 = 1 percentage point).
    The mean curve is evaluated exactly at its breakpoints (not on the plotting grid), and
    only where every seed of the method has started: a mean over the seeds that happen to
    be early is not a mean over seeds. ``final_compute_s`` is the mean over seeds of each
    seed's last-point compute.
    """
    _require(curves, CURVE_COLUMNS[:-1], "compute_to_target")
    rows = []
    for task, tc in curves.groupby(TASK, sort=True):
        stats = {m: _method_targets(tc, m) for m in sorted(tc[METHOD].unique())}
        if reference not in stats:
            raise BenchError(f"compute_to_target: task {task!r} has no curve for reference {reference!r}")
        target = stats[reference]["final_acc"] - tolerance - _EPS
        for st in stats.values():
            hit = st["all"] & (st["mean"] >= target)
            st["reach"] = st["xs"][hit.argmax()] if hit.any() else np.nan
        for m, st in stats.items():
            rows.append({TASK: task, METHOD: m, "final_acc": st["final_acc"],
                         "final_compute_s": st["final_compute_s"], "compute_to_target_s": st["reach"],
                         "ratio_to_reference": st["reach"] / stats[reference]["reach"]})
    return pd.DataFrame(rows, columns=TARGET_COLUMNS)


def _fmt(x: float, spec: str) -> str:
    return "–" if pd.isna(x) else format(x, spec)


def _task_report(task: str, trials: pd.DataFrame, curves: pd.DataFrame) -> list[str]:
    """One table per task; methods without a single point still show their status counts."""
    counts = trials.groupby([METHOD, STATUS]).size().unstack(fill_value=0)
    lines, reference = [f"## {task}", ""], None
    table = pd.DataFrame(columns=TARGET_COLUMNS).set_index(METHOD)
    if curves.empty:
        lines.append("No method has a scored point yet.")
    else:
        finals = _finals(curves).groupby(METHOD)
        reference = "grid" if "grid" in set(curves[METHOD]) else finals[TEST_ACC].mean().idxmax()
        table = (compute_to_target(curves, reference=reference).set_index(METHOD)
                 .join(finals[TEST_ACC].std(ddof=1).rename("spread"))
                 .join(finals[SEED].nunique().rename("seeds")))
        lines.append(f"Reference: {reference}" + ("." if reference == "grid" else
                     " (no grid-search curve in this task: the method with the best final accuracy)."))
    lines += ["", f"| method | seeds | test acc (%) | final compute (s) | compute to target (s) "
                  f"| ratio to {reference or 'reference'} | " + " | ".join(_STATUSES) + " |",
              "|---|---:|---:|---:|---:|---:|" + "---:|" * len(_STATUSES)]
    for m in sorted(set(trials[METHOD])):
        r = table.loc[m] if m in table.index else pd.Series(dtype=float)
        acc = ("–" if pd.isna(r.get("final_acc")) else
               f"{100 * r['final_acc']:.2f} ± {_fmt(100 * r['spread'], '.2f')}")
        status = [str(counts.loc[m].get(s, 0)) for s in _STATUSES]
        lines.append(f"| {m} | {int(r.get('seeds', 0))} | {acc} | "
                     f"{_fmt(r.get('final_compute_s'), ',.1f')} | "
                     f"{_fmt(r.get('compute_to_target_s'), ',.1f')} | "
                     f"{_fmt(r.get('ratio_to_reference'), '.3f')} | " + " | ".join(status) + " |")
    return lines + [""]


def report_markdown(trials: pd.DataFrame) -> str:
    """The numbers behind the trade-off plot, readable without it."""
    _require(trials, _BASE, "report_markdown")
    curves = anytime_curves(trials)
    lines = ["# Accuracy vs compute", "",
             "Test accuracy: class-balanced, at each seed's last point; mean ± sample standard "
             "deviation over seeds. Final compute: resource-seconds at each seed's last point, "
             "mean over seeds. Compute to target: the first compute at which the mean over all "
             "seeds comes within 1 percentage point of the reference's final mean accuracy. "
             "Status columns count every run (search, retrain and learned).", ""]
    for task in sorted(set(trials[TASK])):
        lines += _task_report(task, trials[trials[TASK] == task], curves[curves[TASK] == task])
    return "\n".join(lines)
