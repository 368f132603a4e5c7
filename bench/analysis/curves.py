"""Accuracy-vs-compute curves from a run's records (docs/methods.md#anytime-curves), their summaries
over seeds (mean, interval, compute to target) and the grid's subset bootstrap.

Pure pandas/numpy/scipy, so a finished run can be analysed anywhere, without torch or Ray.
Accuracies are fractions in [0, 1]; compute is what the records charge (``RESOURCE_S``;
``bench.records.rundir.compute_unit`` says in which unit).
"""

from __future__ import annotations

import hashlib
import itertools
import zlib

import numpy as np
import pandas as pd

from bench.analysis.stats import mean_interval, seed_interval
from bench.contract.errors import BenchError
from bench.contract.schema import (COMPUTE_S, ENDED_S, K, KIND, LEARNED, METHOD, OBJECTIVE, OK,
                                   RESOURCE_S, RETRAIN, RETRAIN_OF, SEARCH, SEED, STATUS, TASK,
                                   TEST_ACC, TEST_NLL, TRIAL_ID, VAL_NLL)
from bench.records.tables import atomic_write, plain_strings

CURVE_COLUMNS = [TASK, METHOD, SEED, K, COMPUTE_S, TEST_ACC, TEST_NLL, TRIAL_ID]
# ``complete``: every seed has a point at this compute (only there is ``mean`` a mean over
# all seeds); ``low``/``high``: the band, only where complete
AGGREGATE_COLUMNS = [TASK, METHOD, COMPUTE_S, "mean", "low", "high", "seeds", "complete"]
BOOTSTRAP_COLUMNS = [TASK, METHOD, SEED, K, COMPUTE_S, "mean", "low", "high", "complete"]
TARGET_COLUMNS = [TASK, METHOD, "target", "final_acc", "final_compute_s", "compute_to_target_s",
                  "compute_to_target_low", "compute_to_target_high", "ratio_to_reference"]
BANDS = ("ci", "minmax", "none")
TOLERANCE = 0.01  # "within the target": 1 percentage point below the reference's final mean
# Slack on "within tolerance of the target" so that 0.8 - 0.01 == 0.79 in floating point.
_EPS = 1e-12
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


def _usable_retrains(runs: list[dict]) -> dict[str, dict]:
    """Usable retrain per search trial (OK, with a test score), the earliest where repeated.
    ``runs``: in completion order (``_ordered``)."""
    retrains: dict[str, dict] = {}
    for r in runs:
        if r[KIND] == RETRAIN and r[STATUS] == OK and pd.notna(r[TEST_ACC]):
            retrains.setdefault(_key(r[RETRAIN_OF]), r)
    return retrains


def _point(rows, group_key, k, compute, scored, incumbent):
    rows.append(dict(zip(CURVE_COLUMNS, (*group_key, k, compute, scored[TEST_ACC],
                                         scored[TEST_NLL], incumbent[TRIAL_ID]))))


def _selection(runs: list[dict]) -> str:
    """What picks a search incumbent: validation NLL, or the method's own selection score
    (``objective``, lower is better) where its search runs carry one (e.g. minus CLML)."""
    return (OBJECTIVE if any(r[KIND] == SEARCH and pd.notna(r.get(OBJECTIVE)) for r in runs)
            else VAL_NLL)


def _search_curve(group: list[dict], group_key, rows: list, score: str) -> None:
    """Charge each incumbent's retrain on top of the search so far, as the DE-ELBo study does.
    ``group``: the campaign's runs in completion order (``_ordered``)."""
    retrains = _usable_retrains(group)
    spent, best = 0.0, None
    for k, t in enumerate((r for r in group if r[KIND] == SEARCH), start=1):
        spent += _cost(t[RESOURCE_S])
        if t[STATUS] == OK and pd.notna(t[score]) and (best is None or t[score] < best[score]):
            best = t
        retrain = retrains.get(_key(best[TRIAL_ID])) if best is not None else None
        if retrain is not None:
            _point(rows, group_key, k, spent + _cost(retrain[RESOURCE_S]), retrain, best)


def _learned_curve(group: list[dict], group_key, rows: list) -> None:
    """A learned method's runs score themselves on the test set; its own objective selects."""
    spent, best = 0.0, None
    for k, t in enumerate((r for r in group if r[KIND] == LEARNED), start=1):
        spent += _cost(t[RESOURCE_S])
        if t[STATUS] == OK and pd.notna(t[OBJECTIVE]) and (best is None or t[OBJECTIVE] < best[OBJECTIVE]):
            best = t
        if best is not None:
            _point(rows, group_key, k, spent, best, best)


_CURVE_INPUTS = (TASK, METHOD, SEED, TRIAL_ID, KIND, STATUS, ENDED_S, RESOURCE_S, VAL_NLL,
                 OBJECTIVE, RETRAIN_OF, TEST_ACC, TEST_NLL)


def _campaign_runs(trials: pd.DataFrame):
    """((task, method, seed), its runs in completion order as dicts), by key: one stable
    sort of the whole table (key first) orders each campaign as ``_ordered`` would, and
    its rows are read once (a campaign at a time through pandas cost most of the time)."""
    keys = [TASK, METHOD, SEED]
    table = plain_strings(trials[[c for c in _CURVE_INPUTS if c in trials]])
    if table[keys].isna().to_numpy().any():  # a missing key: pandas' own groups
        for key, group in table.groupby(keys, sort=True, dropna=False):
            yield key, _ordered(group).to_dict("records")
        return
    ordered = table.sort_values(keys + [ENDED_S, TRIAL_ID], kind="stable")
    yield from ((key, list(group)) for key, group in itertools.groupby(
        ordered.to_dict("records"), key=lambda r: (r[TASK], r[METHOD], r[SEED])))


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
    for key, group in _campaign_runs(trials):
        has_search = any(r[KIND] == SEARCH for r in group)
        has_learned = any(r[KIND] == LEARNED for r in group)
        if has_search and has_learned:
            raise BenchError(f"method {key[1]!r} of task {key[0]!r} has both search and learned runs")
        if has_search:
            _search_curve(group, key, rows, _selection(group))
        elif has_learned:
            _learned_curve(group, key, rows)
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _step_values(curve: pd.DataFrame, xs: np.ndarray) -> np.ndarray:
    """Right-continuous step function of one seed's curve; NaN before its first point.

    Compute is not monotone in k (a new incumbent can have a cheaper retrain), so the value
    at budget x is that of the latest k whose compute fits in x.
    """
    compute, ks = curve[COMPUTE_S].to_numpy(float), curve[K].to_numpy()
    by_compute = np.lexsort((ks, compute))  # k is unique within a curve: any sort agrees
    latest_k = np.maximum.accumulate(ks[by_compute])
    idx = np.searchsorted(compute[by_compute], xs, side="right") - 1
    out = np.full(len(xs), np.nan)
    by_k = np.argsort(ks, kind="stable")
    at = by_k[np.searchsorted(ks[by_k], latest_k[idx[idx >= 0]])]
    out[idx >= 0] = curve[TEST_ACC].to_numpy(float)[at]
    return out




def _seed_matrix(method_curves: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Every compute where the mean can change (the union of the seeds' points), and each
    seed's step value there (one row per seed, NaN before its first point)."""
    xs = np.unique(method_curves[COMPUTE_S].to_numpy(float))
    vals = np.vstack([_step_values(g, xs) for _, g in method_curves.groupby(SEED, sort=True)])
    return xs, vals


_PAIRWISE = 8  # numpy sums fewer values than this one after another, more pairwise


def aggregate_curves(curves: pd.DataFrame, band: str = "ci") -> pd.DataFrame:
    """Mean over seeds at every compute where it can change, per (task, method).

    Seeds start at different computes (their first incumbent, or its retrain, lands at
    different times), so ``complete`` marks where every seed has a point: from there on
    ``mean`` is a mean over all seeds; before, it is over the seeds that have started
    (``seeds`` counts them), which plots draw dashed and no statistic uses. Band, where
    complete: "ci" a bootstrap 95% interval of the mean over seeds (``bench.analysis.stats``),
    "minmax" the lowest and highest seed, "none" no band (NaN).
    """
    _require(curves, CURVE_COLUMNS[:-1], "aggregate_curves")
    if band not in BANDS:
        raise BenchError(f"aggregate_curves: band must be one of {', '.join(BANDS)}, got {band!r}")
    frames = []
    for (task, method), g in curves.groupby([TASK, METHOD], sort=True):
        xs, vals = _seed_matrix(g)
        started = ~np.isnan(vals)
        complete = started.all(axis=0)
        low, high = np.full(len(xs), np.nan), np.full(len(xs), np.nan)
        if complete.any() and band == "ci":
            low[complete], high[complete] = mean_interval(vals[:, complete])
        elif complete.any() and band == "minmax":
            low[complete], high[complete] = vals[:, complete].min(0), vals[:, complete].max(0)
        if len(vals) < _PAIRWISE:  # the started seeds summed in seed order, as numpy's
            # mean of so few values does (adding 0 for a seed not started is exact)
            mean = np.where(started, vals, 0.0).sum(axis=0) / started.sum(axis=0)
        else:
            mean = np.array([v[s].mean() for v, s in zip(vals.T, started.T)])
        frames.append(pd.DataFrame({TASK: task, METHOD: method, COMPUTE_S: xs, "mean": mean,
                                    "low": low, "high": high, "seeds": started.sum(axis=0),
                                    "complete": complete}))
    if not frames:
        return pd.DataFrame(columns=AGGREGATE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[AGGREGATE_COLUMNS]


def mean_at(method_curves: pd.DataFrame, xs) -> np.ndarray:
    """One method's mean over all its seeds at each compute in ``xs``; NaN where some seed
    has no point yet (or ``xs`` lies before every point)."""
    vals = np.vstack([_step_values(g, np.asarray(xs, dtype=float))
                      for _, g in method_curves.groupby(SEED, sort=True)])
    return vals.mean(axis=0)  # a NaN seed makes the mean NaN: not a mean over all seeds


def _reach(xs: np.ndarray, vals: np.ndarray, target: float) -> float:
    """The compute from which the mean over all seeds (rows of ``vals``) stays at or above
    ``target`` to the end of the curve; NaN if it ends below (or never covers all seeds).
    Seeds hold their last value after their last point, so "complete" is a suffix."""
    complete = ~np.isnan(vals).any(axis=0)
    if not complete.any():
        return np.nan
    xs, mean = xs[complete], vals[:, complete].mean(axis=0)
    below = np.flatnonzero(mean < target)
    if below.size == 0:
        return float(xs[0])
    return np.nan if below[-1] == len(xs) - 1 else float(xs[below[-1] + 1])


def _reach_each(xs: np.ndarray, vals: np.ndarray, target: float) -> np.ndarray:
    """``_reach`` of each resample at once: ``vals`` has shape (resamples, seeds, computes);
    inf where ``_reach`` is NaN. The same sums in the same order, so the same values."""
    complete = ~np.isnan(vals).any(axis=1)
    mean = vals.mean(axis=1)
    below = complete & (mean < target)
    last = xs.size - 1 - np.argmax(below[:, ::-1], axis=1)  # the last compute below
    out = np.where(below.any(axis=1), np.inf, xs[np.argmax(complete, axis=1)])
    inside = below.any(axis=1) & (last < xs.size - 1)
    out[inside] = xs[last[inside] + 1]
    out[~complete.any(axis=1)] = np.inf
    return out


def _reach_rows(xs: np.ndarray, vals: np.ndarray, rows: np.ndarray, target: float,
                chunk_values: int = 2**22) -> np.ndarray:
    """``_reach_each`` of the seed resamples ``rows`` (shape (..., seeds)), a chunk of
    resamples at a time so that memory stays bounded."""
    flat = rows.reshape(-1, rows.shape[-1])
    step = max(1, chunk_values // max(1, vals.size))
    out = np.concatenate([_reach_each(xs, vals[flat[i:i + step]], target)
                          for i in range(0, len(flat), step)])
    return out.reshape(rows.shape[:-1])


def _bootstrap_candidates(runs: list[dict]) -> tuple[dict[str, np.ndarray], bool]:
    """OK search trials with a retrain, best validation NLL (or selection score) first (ties:
    earlier completion), as the columns the bootstrap draws from; and whether every OK
    search trial had its retrain. ``runs``: one (task, seed)'s runs in completion order."""
    retrains, score = _usable_retrains(runs), _selection(runs)
    ok = sorted((r for r in runs if r[KIND] == SEARCH and r[STATUS] == OK and pd.notna(r[score])),
                key=lambda r: r[score])  # stable: completion order breaks ties
    kept = [(r, retrains[_key(r[TRIAL_ID])]) for r in ok if _key(r[TRIAL_ID]) in retrains]
    columns = {"_search_s": [_cost(r[RESOURCE_S]) for r, _ in kept],
               "_retrain_s": [_cost(retrain[RESOURCE_S]) for _, retrain in kept],
               "_acc": [float(retrain[TEST_ACC]) for _, retrain in kept]}
    return {c: np.array(v, dtype=float) for c, v in columns.items()}, len(kept) == len(ok)


_UNIT_BITS = 53  # Generator.random draws multiples of 2**-53 in [0, 1)


def _first_k(uniform: np.ndarray, k: int) -> np.ndarray:
    """``np.argsort(uniform, axis=1)[:, :k]``, faster: each draw, an integer below 2**53,
    carries its column in the low bits of one uint64 key, and keys sort without indices.
    The draws are distinct (a tie has odds of about n**2 / 2**53), so the order is the
    same; with too many columns for the spare bits, argsort itself."""
    n = uniform.shape[1]
    bits = max(1, (n - 1).bit_length())
    if _UNIT_BITS + bits > 64:
        return np.argsort(uniform, axis=1)[:, :k]
    keys = (uniform * 2.0 ** _UNIT_BITS).astype(np.uint64) << np.uint64(bits)
    keys |= np.arange(n, dtype=np.uint64)
    keys.sort(axis=1)
    return (keys[:, :k] & np.uint64((1 << bits) - 1)).astype(np.intp)


def _bootstrap_k(cand: dict, k: int, draws: int, rng: np.random.Generator):
    """Candidates are sorted best-first, so a subset's winner is its smallest index."""
    n = len(cand["_acc"])
    picks = np.arange(n)[None, :] if k == n else _first_k(rng.random((draws, n)), k)
    winner = picks.min(axis=1)
    compute = cand["_search_s"][picks].sum(axis=1) + cand["_retrain_s"][winner]
    acc = cand["_acc"][winner]
    low, high = np.percentile(acc, [2.5, 97.5])
    return compute.mean(), acc.mean(), low, high


_BOOTSTRAP_VERSION = b"grid-bootstrap-1"  # bump when what a cached file holds changes


def _bootstrap_seed(columns: dict, draws: int, entropy: list[int]) -> np.ndarray:
    """One (task, seed)'s (compute, mean, low, high) for k = 1 .. K, from its own generator
    seeded with ``entropy``. The same candidates give the same numbers, so they are kept in
    the cache (``$BENCH_CACHE``/bootstrap) by a hash of everything they depend on: a grid
    replayed again (a method author's every replay) is not drawn again."""
    from bench.zoo.cache import cache_dir

    digest = hashlib.sha256(_BOOTSTRAP_VERSION + repr((draws, entropy)).encode())
    for name in ("_search_s", "_retrain_s", "_acc"):
        digest.update(np.ascontiguousarray(columns[name], dtype=float).tobytes())
    try:
        path = cache_dir("bootstrap") / f"{digest.hexdigest()}.npy"
        cached = np.load(path) if path.is_file() else None
    except (OSError, ValueError):  # no cache directory, or a file cut short: drawn again
        path = cached = None
    if cached is not None and cached.shape == (len(columns["_acc"]), 4):
        return cached
    rng = np.random.default_rng(entropy)
    stats = np.array([_bootstrap_k(columns, k, draws, rng)
                      for k in range(1, len(columns["_acc"]) + 1)], dtype=float).reshape(-1, 4)
    if path is not None:
        try:
            atomic_write(path, lambda tmp: _save_array(tmp, stats))
        except OSError:  # a cache that takes no file: the numbers stand anyway
            pass
    return stats


def _save_array(path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save given a name would add ".npy" to it
        np.save(f, array)


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
    # each (task, seed)'s runs in completion order; a missing task or seed has no group
    for (task, _, s), group in _campaign_runs(mine[mine[[TASK, SEED]].notna().all(axis=1)]):
        columns, complete = _bootstrap_candidates(group)
        entropy = [seed, zlib.crc32(f"{task}\0{s}".encode())]
        for k, stats in enumerate(_bootstrap_seed(columns, draws, entropy), start=1):
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


def final_points(curves: pd.DataFrame) -> pd.DataFrame:
    """Each (task, method, seed)'s final test accuracy and compute, indexed by them."""
    _require(curves, CURVE_COLUMNS[:-1], "final_points")
    return _finals(curves).set_index([TASK, METHOD, SEED])[[TEST_ACC, COMPUTE_S, TRIAL_ID]]


def method_kinds(trials: pd.DataFrame) -> dict[str, str]:
    """Each label's kind: "learned" if it has learned runs, else "search"."""
    return trials.groupby(METHOD)[KIND].agg(
        lambda k: LEARNED if (k == LEARNED).any() else SEARCH).to_dict()


def sweep_best(trials: pd.DataFrame) -> pd.Series:
    """A learned method's best run of its sweep by test accuracy, per (task, method, seed):
    what an oracle that peeks at the test set would pick instead of the method's rule."""
    ok = trials[(trials[KIND] == LEARNED) & (trials[STATUS] == OK) & trials[TEST_ACC].notna()]
    return ok.groupby([TASK, METHOD, SEED])[TEST_ACC].max().astype(float)


def compute_to_target(curves: pd.DataFrame, reference: str = "grid",
                      tolerance: float = TOLERANCE, interval: bool = True) -> pd.DataFrame:
    """The compute each method needs to match the reference (docs/methods.md#compute-to-target).

    Target per task: the reference's mean over seeds of each seed's final test accuracy,
    minus ``tolerance`` (absolute; 0.01 = 1 percentage point). A method reaches it at the
    compute from which its mean curve stays at or above the target to the end of its curve
    (a curve that reaches it and falls below again has not reached it; one that ends below
    has no compute to target). The mean is taken only where every seed of the method has
    a point, and evaluated exactly at its breakpoints. ``compute_to_target_low``/``high``:
    a bootstrap 95% interval over the method's seeds, the target held fixed (inf: some
    resamples never stay within it). ``final_compute_s`` is the mean over seeds of each
    seed's last-point compute.
    """
    _require(curves, CURVE_COLUMNS[:-1], "compute_to_target")
    rows = []
    for task, tc in curves.groupby(TASK, sort=True):
        matrices = {m: _seed_matrix(g) for m, g in tc.groupby(METHOD, sort=True)}
        if reference not in matrices:
            raise BenchError(f"compute_to_target: task {task!r} has no curve for reference {reference!r}")
        finals = _finals(tc).groupby(METHOD)
        final_acc, final_compute = finals[TEST_ACC].mean(), finals[COMPUTE_S].mean()
        target = final_acc[reference] - tolerance - _EPS
        reach = {m: _reach(xs, vals, target) for m, (xs, vals) in matrices.items()}
        for m, (xs, vals) in matrices.items():
            low = high = np.nan
            if interval:
                low, high = seed_interval(len(vals), lambda rows, xs=xs, vals=vals:
                                          _reach_rows(xs, vals, rows, target),
                                          vectorized=True)
            rows.append({TASK: task, METHOD: m, "target": target + _EPS,
                         "final_acc": final_acc[m], "final_compute_s": final_compute[m],
                         "compute_to_target_s": reach[m], "compute_to_target_low": low,
                         "compute_to_target_high": high,
                         "ratio_to_reference": reach[m] / reach[reference]})
    return pd.DataFrame(rows, columns=TARGET_COLUMNS)
