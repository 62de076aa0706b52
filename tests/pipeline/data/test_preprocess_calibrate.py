"""Preprocessing fitted on training rows; split-conformal calibration."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.calibrate.conformal import conformal_threshold, min_calibration_rows, p_values
from pipeline.data.preprocess import Preprocessor
from pipeline.data.schema import Schema
from pipeline.data.split import member_folds, split_rows
from pipeline.errors import InputError
from vae.model import MISSING, UNSEEN


def test_constant_column_is_safe_and_unseen_categories_are_marked():
    schema = Schema(numeric=("k", "x"), categorical=("c",))
    train = pd.DataFrame({"k": [5.0] * 4, "x": [0.0, 1.0, 2.0, 3.0], "c": ["a", "b", "a", "b"]})
    pre = Preprocessor(schema).fit(train)
    new = pd.DataFrame({"k": [5.0, 6.0], "x": [np.nan, 1.5], "c": ["zz", np.nan]}, dtype=object)
    new[["k", "x"]] = new[["k", "x"]].astype(float)
    b = pre.transform(new)
    assert b.x_num[:, 0].tolist() == [0.0, 1.0]  # std of a constant column is taken as 1
    assert b.mask_num[:, 1].tolist() == [0.0, 1.0]
    assert b.x_cat[:, 0].tolist() == [UNSEEN, MISSING]
    assert pre.cardinalities == (2,)


def test_threshold_is_the_conformal_order_statistic():
    cal = np.arange(1.0, 100.0)  # 99 scores 1..99
    # k = ceil(100 * 0.95) = 95 -> the 95th smallest score
    assert conformal_threshold(cal, 0.05) == 95.0
    assert conformal_threshold(cal, 0.01) == 99.0


def test_too_few_calibration_rows_says_how_many_are_needed():
    assert min_calibration_rows(0.01) == 99
    with pytest.raises(InputError, match=r"alpha=0\.01 needs at least 99 calibration rows, got 50"):
        conformal_threshold(np.zeros(50), 0.01)
    with pytest.raises(InputError, match=r"alpha .* must be in \(0, 1\), got 1.5"):
        conformal_threshold(np.zeros(50), 1.5)


def test_false_positive_rate_is_controlled_over_many_seeds():
    alpha, n_cal, n_test, seeds = 0.05, 399, 2000, 40
    fp = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        thr = conformal_threshold(rng.standard_t(3, n_cal), alpha)
        fp += int((rng.standard_t(3, n_test) > thr).sum())
    n = seeds * n_test
    lo, hi = stats.binom.interval(0.99, n, alpha)
    # marginal FPR = 1 - k/(n+1) = 0.05 exactly here; the realised rate must sit in the 99% interval,
    # widened by the calibration-to-calibration spread (Beta(k, n + 1 - k) per seed).
    spread = math.sqrt(alpha * (1 - alpha) / (n_cal + 2) / seeds) * n * 2.6
    assert lo - spread <= fp <= hi + spread


def test_p_values():
    cal = np.array([1.0, 2.0, 3.0, 4.0])
    assert p_values(np.array([0.0, 2.5, 4.0, 9.0]), cal).tolist() == [1.0, 0.6, 0.4, 0.2]


def test_split_is_disjoint_and_seeded():
    s = split_rows(100, 0.15, 0.2, seed=1)
    parts = np.concatenate([s.train, s.val, s.cal])
    assert sorted(parts.tolist()) == list(range(100))
    assert (len(s.val), len(s.cal)) == (15, 20)
    assert np.array_equal(s.cal, split_rows(100, 0.15, 0.2, seed=1).cal)
    with pytest.raises(InputError, match="training needs at least 10 rows, got 5"):
        split_rows(5, 0.15, 0.2, seed=0)


def test_member_folds_cross_fit_the_non_calibration_rows():
    s = split_rows(100, 0.15, 0.2, seed=1)
    folds = member_folds(s, 6, seed=1)
    rest = np.sort(np.concatenate([s.train, s.val]))
    assert np.array_equal(folds[0][0], s.train) and np.array_equal(folds[0][1], s.val)  # member 0: the split
    for train, val in folds:
        assert len(val) == 15 and len(train) == 65  # every member trains on as many rows
        assert np.array_equal(np.sort(np.concatenate([train, val])), rest)  # never a calibration row
    vals = [set(v.tolist()) for _, v in folds[:5]]  # 65 // 15 = 4 blocks beside the split's own
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1 :])  # disjoint blocks
    assert np.array_equal(folds[5][1], folds[0][1])  # then they cycle
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, member_folds(s, 6, seed=1), strict=True))
    with pytest.raises(InputError, match="n_members must be >= 1, got 0"):
        member_folds(s, 0, seed=1)


def test_quantile_scaling_is_monotone_gaussian_and_extrapolates_linearly():
    schema = Schema(numeric=("x",), categorical=())
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": rng.lognormal(size=2000)})
    pre = Preprocessor(schema, scaling="quantile").fit(train)
    z = pre.transform(train).x_num[:, 0].numpy()
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1.0) < 0.05  # heavy tail made Gaussian
    far = pd.DataFrame({"x": [train.x.max() * 2, train.x.max() * 4]})
    zf = pre.transform(far).x_num[:, 0].numpy()
    assert z.max() < zf[0] < zf[1]  # beyond the training range: still increasing, no clipping
    back = Preprocessor.from_dict(schema, pre.to_dict())
    assert np.array_equal(back.transform(far).x_num.numpy(), pre.transform(far).x_num.numpy())


def test_unknown_scaling_is_rejected():
    with pytest.raises(ValueError, match="scaling must be 'standard' or 'quantile'"):
        Preprocessor(Schema(numeric=("x",), categorical=()), scaling="minmax").fit(pd.DataFrame({"x": [1.0]}))
