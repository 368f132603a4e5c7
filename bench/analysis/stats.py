"""Uncertainty over seeds: bootstrap intervals and the paired signed-rank test (scipy.stats).

Intervals are percentile bootstraps over seeds with a fixed generator, so a report is the
same every time it is made. Percentile rather than BCa: with three seeds BCa's
acceleration is undefined whenever the seeds agree. With so few seeds a bootstrap interval
is too narrow, never too wide (it cannot leave the seeds' range): read it as a lower bound
on the uncertainty.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000
WILCOXON_MIN_PAIRS = 6  # below, no two-sided p-value can fall under 0.05 (5 pairs: 2/32)
_SEED = 0


def _bootstrap(data: np.ndarray, statistic, vectorized: bool):
    with warnings.catch_warnings():  # seeds that all agree: a degenerate, exact interval
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", getattr(stats, "DegenerateDataWarning", RuntimeWarning))
        return stats.bootstrap((data,), statistic, axis=0, vectorized=vectorized,
                               n_resamples=RESAMPLES, method="percentile",
                               confidence_level=CONFIDENCE, rng=np.random.default_rng(_SEED))


def mean_interval(values) -> tuple[np.ndarray, np.ndarray]:
    """95% interval of the mean over seeds (axis 0) for each column; NaN below 2 seeds.

    Exactly ``scipy.stats.bootstrap``'s percentile interval of ``np.mean`` (the same
    resamples, means and quantile arithmetic: ``tests/test_curves.py`` holds it to the
    bit), with each distinct resample's mean computed once (3 seeds have 27 distinct
    resamples among the 2000) and the four order statistics the quantiles need picked by
    partition instead of a sort."""
    values = np.asarray(values, dtype=float)
    seeds, shape = values.shape[0], values.shape[1:]
    if seeds < 2:
        return np.full(shape, np.nan), np.full(shape, np.nan)
    if np.isnan(values).any():  # scipy's own handling of what has no mean
        ci = _bootstrap(values, np.mean, vectorized=True).confidence_interval
        return np.asarray(ci.low, dtype=float), np.asarray(ci.high, dtype=float)
    rows, which, counts = _resample_rows(seeds)
    means = np.moveaxis(values, 0, -1)[..., rows].mean(axis=-1)  # each distinct resample's
    return _percentile_interval(means, which, counts)


def _percentile_interval(values: np.ndarray, which: np.ndarray, counts: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """scipy.stats.bootstrap's percentile interval of the ``RESAMPLES`` statistics
    ``values[..., which]``, given each distinct resample's statistic once (last axis) and
    how often it was drawn: scipy.stats.quantile's "linear" method, term by term, on the
    four order statistics it needs."""
    alpha = (1 - CONFIDENCE) / 2
    picks = []
    for p in (alpha, 1 - alpha):
        at = p * RESAMPLES + (1 - p)
        above = at // 1
        below = above - 1
        picks.append((at % 1, int(min(max(below, 0.0), RESAMPLES - 1)),
                      int(min(max(above, 0.0), RESAMPLES - 1))))
    ranks = sorted({k for _, lo, hi in picks for k in (lo, hi)})
    if values.shape[-1] <= 64:  # few distinct values: the k-th of the 2000 from their counts
        order = np.argsort(values, axis=-1)
        ends = np.cumsum(counts[order], axis=-1)
        ranked = {k: np.take_along_axis(values, np.take_along_axis(
            order, (ends <= k).sum(axis=-1, keepdims=True), -1), -1)[..., 0] for k in ranks}
    else:  # as many as resamples: the four order statistics, by partition
        part = np.partition(values[..., which], ranks, axis=-1)
        ranked = {k: part[..., k] for k in ranks}
    low, high = ((1 - g) * ranked[lo] + g * ranked[hi] for g, lo, hi in picks)
    return np.asarray(low, dtype=float), np.asarray(high, dtype=float)


@functools.lru_cache(maxsize=16)
def _resample_rows(seeds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scipy.stats.bootstrap's resamples of ``seeds`` seeds (the rows it draws from the
    same generator), as distinct rows, which of them each resample is, and how often each
    was drawn."""
    draws = np.random.default_rng(_SEED).integers(0, seeds, (RESAMPLES, seeds))
    rows, which, counts = np.unique(draws, axis=0, return_inverse=True, return_counts=True)
    return rows, which.reshape(-1), counts


def seed_interval(seeds: int, statistic: Callable[[np.ndarray], float],
                  vectorized: bool = False) -> tuple[float, float]:
    """95% interval of ``statistic(rows)`` where ``rows`` indexes ``seeds`` seeds drawn with
    replacement. A statistic that does not exist for a resample returns inf (e.g. compute
    to a target never reached), so the interval's high end can be inf. ``vectorized``:
    ``statistic`` takes every resample at once, rows of shape (..., seeds), and returns
    one value per resample (the same resamples, so the same interval, in one call)."""
    if seeds < 2:
        return np.nan, np.nan
    # each distinct resample's statistic once, then scipy's interval of all of them
    rows, which, counts = _resample_rows(seeds)
    values = (np.asarray(statistic(rows), dtype=float) if vectorized
              else np.array([statistic(r) for r in rows], dtype=float))
    if np.isnan(values).any():  # scipy's own handling of a statistic without a value

        def on_rows(sample: np.ndarray, axis: int = -1) -> float:
            return statistic(np.moveaxis(sample, axis, -1).astype(int))

        ci = _bootstrap(np.arange(seeds, dtype=float), on_rows,
                        vectorized=vectorized).confidence_interval
        low, high = ci.low, ci.high
    else:
        low, high = _percentile_interval(values, which, counts)
    # percentiles between two inf draws come out NaN: they are inf
    return tuple(float(np.inf if np.isnan(v) else v) for v in (low, high))


def wilcoxon_p(differences) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; NaN below
    ``WILCOXON_MIN_PAIRS`` pairs, 1.0 where every difference is zero."""
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) < WILCOXON_MIN_PAIRS:
        return np.nan
    if not np.any(d):
        return 1.0
    return float(stats.wilcoxon(d).pvalue)
