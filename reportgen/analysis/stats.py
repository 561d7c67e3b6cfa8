"""Bootstrap confidence intervals over examples, shared by every analysis."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom

from reportgen.findings import Estimate

N_BOOT = 1000


def resamples(alpha: float) -> int:
    """Bootstrap resamples for a (1 - alpha) interval: N_BOOT, or enough that each tail holds at
    least 10 resamples when alpha is small (e.g. Bonferroni-corrected)."""
    return max(N_BOOT, math.ceil(20 / alpha))


def bootstrap(values, seed: int = 0, axis: int = 0, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and (1 - alpha) percentile-bootstrap interval of `values` resampled over `axis` (examples).

    Returns arrays shaped like `values` without `axis`. NaNs (e.g. dropped pairs) are ignored; an
    entry with fewer than two values has no interval (NaN), since resampling one value always
    gives it back and would show a zero-width interval. (bootstrap_means does the work.)
    """
    v = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    shape = v.shape[1:]
    if v.shape[0] == 0:
        nan = np.full(shape, np.nan)
        return nan, nan, nan
    mean, lo, hi, _ = bootstrap_means(v.reshape(v.shape[0], -1), seed, alpha)
    return mean.reshape(shape), lo.reshape(shape), hi.reshape(shape)


def estimate(values, seed: int = 0, alpha: float = 0.05) -> Estimate:
    """Estimate (mean, (1 - alpha) CI, n) of a 1-D sample over examples, ignoring NaNs."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean, lo, hi = bootstrap(v, seed=seed, alpha=alpha)
    return Estimate(float(mean), float(lo), float(hi), int(v.size))



def bootstrap_means(values, seed: int = 0, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`bootstrap` of many columns at once: (mean, lo, hi, n) of each column of `values` [n, K].

    The same resamples and percentiles as `bootstrap` (same seed, same draws), each resample's
    column means taken as one matrix product of draw counts, so thousands of columns cost one
    pass instead of an [resamples, n, K] array; resampled means are computed in float32 (the
    interval ends agree with `bootstrap` to about 1e-6 of the values' scale). NaNs are ignored; a
    column with fewer than two values has no interval.
    """
    v = np.asarray(values, dtype=np.float64)
    n, k = v.shape
    finite = ~np.isnan(v)
    count = finite.sum(0)
    mean, lo, hi = (np.full(k, np.nan) for _ in range(3))
    some = np.nonzero(count > 0)[0]
    if some.size == 0:
        return mean, lo, hi, count
    zeroed = np.where(finite[:, some], v[:, some], 0.0)
    mean[some] = zeroed.sum(0) / count[some]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples(alpha), n))  # as in `bootstrap`
    draws = draw_counts(idx, n, np.float32)
    # Columns often share where their values are missing: count the draws once per pattern.
    patterns, which = np.unique(np.packbits(finite[:, some], axis=0), axis=1, return_inverse=True)
    drawn = draws @ np.unpackbits(patterns, axis=0, count=n).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (draws @ zeroed.astype(np.float32)) / drawn[:, which.ravel()]  # NaN where a resample drew no value
    two = count[some] >= 2
    ends = _nan_percentiles(means, [100 * alpha / 2, 100 * (1 - alpha / 2)]).astype(np.float64)
    lo[some], hi[some] = np.where(two, ends, np.nan)
    return mean, lo, hi, count


def _nan_percentiles(x: np.ndarray, q: list[float]) -> np.ndarray:
    """np.nanpercentile(x, q, axis=0) ('linear' method) without its per-column loop over columns
    that hold a NaN."""
    s = np.sort(x, axis=0)  # NaNs last
    m = (~np.isnan(x)).sum(0)
    out = []
    for p in q:
        pos = (p / 100) * np.maximum(m - 1, 0)
        below = np.floor(pos).astype(int)
        above = np.minimum(below + 1, np.maximum(m - 1, 0))
        a = np.take_along_axis(s, below[None], 0)[0]
        b = np.take_along_axis(s, above[None], 0)[0]
        out.append(np.where(m > 0, a + (b - a) * (pos - below), np.nan))
    return np.array(out)


NULL_P = 0.01  # a test fails its null when this improbable under its stated error rate


def null_passed(twin_confirmed: list[int], error_rate: float) -> bool:
    """Whether untrained twins confirmed no more than a test's error rate allows.

    A test controlling its family-wise error at `error_rate` confirms anything on an untrained
    twin with probability at most `error_rate`; so the number of twins with a confirmation is at
    most Binomial(twins, error_rate). The test fails its null when that many or more would occur
    with probability below NULL_P (with 3 twins at 5%: two twins or more).
    """
    k = sum(1 for c in twin_confirmed if c > 0)
    return k == 0 or float(binom.sf(k - 1, len(twin_confirmed), error_rate)) >= NULL_P


def draw_counts(idx: np.ndarray, n: int, dtype=np.float64) -> np.ndarray:
    """[B, n] how often each of n items is drawn in each row of the draws `idx` [B, m] (the
    multiplicities of bootstrap resamples; one bincount, where np.add.at is tens of times slower)."""
    b = idx.shape[0]
    flat = (idx + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(dtype)
