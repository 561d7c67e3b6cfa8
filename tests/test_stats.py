"""Bootstrap intervals over examples: known answers for tiny samples."""

from __future__ import annotations

import numpy as np

from reportgen.analysis import stats


def test_constant_sample_has_a_point_interval_and_nans_are_ignored():
    mean, lo, hi = stats.bootstrap(np.array([[2.0, np.nan], [2.0, 1.0], [2.0, 3.0]]))
    assert mean.tolist() == [2.0, 2.0] and lo[0] == hi[0] == 2.0
    assert 1.0 <= lo[1] <= 2.0 <= hi[1] <= 3.0


def test_an_entry_with_one_value_has_no_interval():
    """One pair at a position: resampling gives the value back, which is no evidence of precision."""
    mean, lo, hi = stats.bootstrap(np.array([[1.0, 0.5], [np.nan, 0.7], [np.nan, 0.9]]))
    assert mean[0] == 1.0 and np.isnan(lo[0]) and np.isnan(hi[0])
    assert lo[1] < mean[1] < hi[1]
    e = stats.estimate([np.nan, 0.25])
    assert e.mean == 0.25 and e.n == 1 and np.isnan(e.lo) and np.isnan(e.hi)
    assert stats.estimate([]).n == 0


def test_smaller_alpha_widens_the_interval_with_enough_resamples():
    v = np.random.default_rng(0).normal(size=60)
    wide, narrow = stats.estimate(v, alpha=0.05 / 8), stats.estimate(v)
    assert wide.lo < narrow.lo < narrow.mean < narrow.hi < wide.hi
    assert stats.resamples(0.05) == stats.N_BOOT and stats.resamples(0.05 / 16) * 0.05 / 32 >= 10


def test_many_columns_at_once_give_bootstrap_s_intervals():
    """bootstrap_means draws the same resamples as bootstrap and takes the same percentiles (of
    means computed in float32), NaNs (examples without a value) included, whatever the alpha."""
    rng = np.random.default_rng(3)
    v = rng.random((40, 6))
    v[rng.random((40, 6)) < 0.3] = np.nan
    v[:, 4] = np.nan
    v[:, 5] = np.nan
    v[7, 5] = 0.5
    for alpha in (0.05, 0.05 / 12):
        mean, lo, hi, n = stats.bootstrap_means(v, seed=5, alpha=alpha)
        ref = stats.bootstrap(v, seed=5, alpha=alpha)
        for got, want in zip((mean, lo, hi), ref):
            assert np.allclose(got, want, equal_nan=True, rtol=0, atol=1e-6)
        assert n.tolist() == (~np.isnan(v)).sum(0).tolist()
    assert np.isnan(lo[4]) and mean[5] == 0.5 and np.isnan(hi[5])


def test_draw_counts_are_the_multiplicities_of_each_resample():
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 7, (50, 11))
    expected = np.zeros((50, 7))
    np.add.at(expected, (np.arange(50)[:, None], idx), 1.0)
    counts = stats.draw_counts(idx, 7, np.float32)
    assert counts.dtype == np.float32 and np.array_equal(counts, expected)
    assert (counts.sum(1) == 11).all()
