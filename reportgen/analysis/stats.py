"""Bootstrap confidence intervals over examples, shared by every analysis."""

from __future__ import annotations

import warnings

import numpy as np

from reportgen.analysis.findings import Estimate

N_BOOT = 1000


def bootstrap(values, seed: int = 0, n_boot: int = N_BOOT, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% percentile-bootstrap interval of `values` resampled over `axis` (examples).

    Returns arrays shaped like `values` without `axis`. NaNs (e.g. dropped pairs) are ignored; an
    entry with fewer than two values has no interval (NaN), since resampling one value always
    gives it back and would show a zero-width interval.
    """
    v = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    n = v.shape[0]
    if n == 0:
        nan = np.full(v.shape[1:], np.nan)
        return nan, nan, nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    # An all-NaN column (every pair dropped) is reported as NaN, without numpy's warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        means = np.nanmean(v[idx], axis=1)
        lo, hi = np.nanpercentile(means, [2.5, 97.5], axis=0)
        few = (~np.isnan(v)).sum(0) < 2
        return np.nanmean(v, axis=0), np.where(few, np.nan, lo), np.where(few, np.nan, hi)


def estimate(values, seed: int = 0) -> Estimate:
    """Estimate (mean, 95% CI, n) of a 1-D sample over examples, ignoring NaNs."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean, lo, hi = bootstrap(v, seed=seed)
    return Estimate(float(mean), float(lo), float(hi), int(v.size))

