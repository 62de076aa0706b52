"""Flag rules with error-rate guarantees (conformal p-values, BH, calibration-conditional) and batch health."""

import numpy as np
import pytest
from scipy import stats

from pipeline.calibrate.conformal import conformal_threshold
from pipeline.calibrate.health import batch_health
from pipeline.calibrate.metrics import f1_optimal_threshold, labelled_metrics, labels_from
from pipeline.calibrate.rules import FlagRule, apply_rule, bh_q_values, dkw_epsilon, min_rows_conditional
from pipeline.errors import InputError


def test_alpha_rule_matches_the_calibrated_threshold_and_flags_above_it():
    rng = np.random.default_rng(0)
    cal, batch = rng.normal(size=499), rng.normal(size=1000)
    f = apply_rule(FlagRule("alpha", 0.05), batch, cal)
    assert f.threshold == conformal_threshold(cal, 0.05)
    assert np.array_equal(f.is_anomaly, (batch > f.threshold).astype(int))
    assert np.array_equal(f.is_anomaly, (f.p_value <= 0.05).astype(int))


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_realised_false_positive_rate_is_inside_the_binomial_interval(alpha):
    seeds, n_cal, m = 200, 999, 1000
    flagged = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        flagged += int(
            apply_rule(FlagRule("alpha", alpha), rng.normal(size=m), rng.normal(size=n_cal)).is_anomaly.sum()
        )
    lo, hi = stats.binom.interval(0.99, seeds * m, alpha)
    # Each seed draws a new calibration set: the realised rate varies a little more than binomial.
    slack = 3 * np.sqrt(alpha * (1 - alpha) / (n_cal + 2) / seeds) * seeds * m
    assert lo - slack <= flagged <= hi + slack


def test_bh_q_values_match_the_definition():
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.5])
    # sorted: .01 .03 .04 .2 .5 -> m p / rank: .05 .075 .0667 .25 .5 -> running min from the right
    assert bh_q_values(p).round(4).tolist() == [0.05, 0.0667, 0.0667, 0.25, 0.5]


def test_bh_controls_the_false_discovery_rate_on_average():
    q_level, fdps, power = 0.1, [], []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        cal = rng.normal(size=999)
        y = np.r_[np.zeros(900), np.ones(100)].astype(int)
        batch = np.r_[rng.normal(size=900), rng.normal(3.0, 1.0, size=100)]
        f = apply_rule(FlagRule("fdr", q_level), batch, cal)
        flagged = f.is_anomaly.astype(bool)
        fdps.append(((y == 0) & flagged).sum() / max(flagged.sum(), 1))
        power.append(flagged[y == 1].mean())
        assert np.array_equal(flagged, f.q_value <= q_level)
    assert np.mean(fdps) <= q_level + 3 * np.std(fdps) / np.sqrt(len(fdps))
    assert np.mean(power) > 0.3  # and it finds anomalies


def test_conditional_rule_holds_for_most_calibration_sets():
    alpha, delta, n_cal = 0.05, 0.1, 2000
    bad = 0
    for seed in range(200):
        cal = np.random.default_rng(seed).normal(size=n_cal)
        f = apply_rule(FlagRule("conditional", alpha, delta), np.zeros(1), cal)
        bad += (1 - stats.norm.cdf(f.threshold)) > alpha  # the true FPR of this calibration set's threshold
    assert bad / 200 <= delta
    assert f.effective_level == pytest.approx(alpha - dkw_epsilon(n_cal, delta))


def test_levels_the_calibration_set_cannot_reach_say_how_many_rows_are_needed():
    cal = np.zeros(50)
    with pytest.raises(InputError, match=r"alpha=0\.001 needs at least 999 calibration rows .* this model has 50"):
        apply_rule(FlagRule("alpha", 0.001), np.zeros(3), cal)
    need = min_rows_conditional(0.05, 0.1)
    with pytest.raises(InputError, match=f"needs at least {need} calibration rows; this model has 50"):
        apply_rule(FlagRule("conditional", 0.05, 0.1), np.zeros(3), cal)
    assert 0.05 - dkw_epsilon(need, 0.1) >= 1 / (need + 1) > 0.05 - dkw_epsilon(need - 1, 0.1) - 1e-12
    with pytest.raises(InputError, match=r"alpha must be in \(0, 1\), got 0"):
        FlagRule("alpha", 0)


def test_health_is_quiet_on_a_normal_batch_and_warns_on_a_shifted_one():
    rng = np.random.default_rng(1)
    cal = rng.normal(size=2000)
    same = rng.normal(size=1000)
    ok = batch_health(same, cal, int((same > conformal_threshold(cal, 0.05)).sum()), 0.05)
    assert ok.warning == "" and ok.ks_pvalue > 0.01
    shifted = rng.normal(0.7, 1.0, size=1000)
    h = batch_health(shifted, cal, int((shifted > conformal_threshold(cal, 0.05)).sum()), 0.05)
    assert h.binomial_pvalue < 1e-6 and h.ks_pvalue < 1e-6
    assert h.warning.startswith("batch looks shifted") and h.warning.endswith("recalibrate or retrain")
    # Many anomalies in an otherwise normal batch: an excess of flags, the bulk of the scores unchanged.
    mixed = np.r_[rng.normal(size=960), rng.normal(6.0, 1.0, size=40)]
    a = batch_health(mixed, cal, int((mixed > conformal_threshold(cal, 0.01)).sum()), 0.01)
    assert a.binomial_pvalue < 0.01 and a.ks_pvalue > 0.01
    assert "holds more anomalies than the false-positive rate explains" in a.warning


def test_health_tells_a_batch_of_many_anomalies_from_a_shifted_one_by_its_unflagged_part():
    rng = np.random.default_rng(2)
    cal = rng.normal(size=2000)
    t = conformal_threshold(cal, 0.05)
    # 30% anomalies: the whole batch's KS fails, but the rows below the threshold score like calibration
    many = np.r_[rng.normal(size=700), rng.normal(6.0, 1.0, size=300)]
    a = batch_health(many, cal, int((many > t).sum()), 0.05, unit="images", threshold=t)
    assert a.ks_pvalue < 1e-6 and a.unflagged_ks_pvalue > 0.01
    assert "this batch holds many anomalies; the images it does not flag score like the calibration data" in a.warning
    assert "recalibrate" not in a.warning and a.warning.startswith("flagged 3")
    # a shift moves the unflagged part too
    shifted = rng.normal(0.7, 1.0, size=1000)
    h = batch_health(shifted, cal, int((shifted > t).sum()), 0.05, threshold=t)
    assert h.unflagged_ks_pvalue < 0.01 and h.warning.startswith("batch looks shifted")
    assert "and so do the rows it does not flag" in h.warning and h.warning.endswith("recalibrate or retrain")


def test_labelled_metrics_and_f1_optimal_threshold():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.9, 0.8, 1.0])
    m = labelled_metrics(y, s, np.array([0, 0, 1, 0, 1]))
    assert (m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5)
    assert m["auroc"] == pytest.approx(5 / 6)
    t = f1_optimal_threshold(y, s)
    assert t == pytest.approx(0.5)  # flag 0.8, 0.9, 1.0: F1 = 0.8, the best cut, midway between 0.8 and 0.2
    assert f1_optimal_threshold(np.array([0, 1]), np.array([1.0, np.nextafter(1.0, 2.0)])) == 1.0  # adjacent
    assert f1_optimal_threshold(np.zeros(5, int), s) is None
    with pytest.raises(InputError, match=r"label column 'y' must hold 0 or 1 \(1 = anomaly\), row 1 holds 'x'"):
        labels_from(np.array([0, "x"], dtype=object), "y")


def test_health_says_fewer_flags_than_expected_when_the_threshold_turns_conservative():
    rng = np.random.default_rng(2)
    cal = rng.normal(size=4000)
    t = conformal_threshold(cal, 0.05)
    # the same bulk, with the rows above the threshold pulled just below it: no flags where ~5% were expected
    low = rng.normal(size=500)
    low[low > t] = t - 0.01
    h = batch_health(low, cal, int((low > t).sum()), 0.05)
    assert h.flagged == 0 and h.binomial_pvalue < 0.01 and h.ks_pvalue > 0.01
    assert "fewer rows than the false-positive rate predicts" in h.warning
    assert "more anomalies" not in h.warning


@pytest.mark.parametrize(
    "n,m,decimals",
    [
        (50, 30, None),
        (9_000, 500, 1),
        (10_001, 4_000, None),
        (150_000, 999, None),
        (150_000, 12_000, 1),
        (200_001, 300, 2),
    ],
)
def test_ks_test_equals_scipy_ks_2samp_with_ties_and_infinities(n, m, decimals):
    from pipeline.calibrate.health import ks_test

    rng = np.random.default_rng(n + m)
    batch, ref = rng.normal(0.05, 1.0, n), rng.normal(0.0, 1.0, m)
    if decimals is not None:  # ties inside and across the samples
        batch, ref = np.round(batch, decimals), np.round(ref, decimals)
    batch[:5] = np.inf
    want, got = stats.ks_2samp(batch, ref), ks_test(batch, ref)
    assert got.statistic == pytest.approx(float(want.statistic), abs=1e-12)
    assert got.pvalue == pytest.approx(float(want.pvalue), rel=1e-9, abs=1e-300)


def test_batch_health_of_a_files_chunks_equals_that_of_the_joined_scores():
    rng = np.random.default_rng(7)
    cal = rng.normal(size=999)
    for n in (3_000, 40_000):
        chunks = [rng.normal(0.1, 1.0, size=k) for k in (n // 2, 0, n - n // 2)]
        joined, parts = batch_health(np.concatenate(chunks), cal, 60, 0.01), batch_health(chunks, cal, 60, 0.01)
        assert joined == parts and parts.rows == n


def test_flag_count_test_stays_quiet_on_large_batches_of_a_well_calibrated_model():
    # 300 models, each calibrated on 2,000 normal scores, each scoring a batch of 100,000 normal rows. Every
    # threshold keeps its promise (the flag rate is Beta(j, n + 1 - j) around level), so a test at 0.01 may
    # warn on about 1% of them. A binomial test ignores the calibration set's noise and warns on most.
    from scipy.stats import binomtest, norm

    from pipeline.calibrate.health import flag_count_pvalue

    rng = np.random.default_rng(11)
    n_cal, m, level = 2000, 100_000, 0.05
    j = int(np.floor(level * (n_cal + 1)))
    ours = binomial = 0
    for _ in range(300):
        cal = rng.normal(size=n_cal)
        t = np.sort(cal)[::-1][j - 1]  # p-value <= level exactly when the score is above this
        flagged = int(rng.binomial(m, norm.sf(t)))
        ours += flag_count_pvalue(flagged, m, level, n_cal) < 0.01
        binomial += binomtest(flagged, m, level).pvalue < 0.01
    assert ours / 300 <= 0.03 and binomial / 300 >= 0.5


def test_flag_count_pvalue_counts_p_values_and_falls_back_to_the_binomial_without_calibration():
    from scipy.stats import binomtest

    from pipeline.calibrate.conformal import p_values
    from pipeline.calibrate.health import flag_count_pvalue

    rng = np.random.default_rng(12)
    cal, x = rng.normal(size=300), rng.normal(size=1000)
    j = int(np.floor(0.05 * 301))
    assert (p_values(x, cal) <= 0.05).sum() == (x > np.sort(cal)[::-1][j - 1]).sum()
    assert flag_count_pvalue(30, 200, 0.05, 0) == pytest.approx(binomtest(30, 200, 0.05).pvalue)
    assert flag_count_pvalue(5, 200, 0.001, 100) == pytest.approx(binomtest(5, 200, 0.001).pvalue)  # j = 0
    assert flag_count_pvalue(0, 0, 0.05, 300) == 1.0
    assert flag_count_pvalue(500, 1000, 0.05, 300) < 1e-6 and flag_count_pvalue(0, 1000, 0.05, 300) < 0.01
    assert 0.0 < flag_count_pvalue(50, 1000, 0.05, 300) <= 1.0


def test_exceedance_count_is_the_beta_binomial_of_the_calibration_order_statistic():
    from pipeline.calibrate.conformal import exceedance_count

    count = exceedance_count(1000, 99, 5)  # above the 5th largest of 99: rate Beta(5, 95), mean 5 / 100
    assert count.mean() == pytest.approx(50.0) and count.var() > 1000 * 0.05 * 0.95  # wider than binomial
    with pytest.raises(ValueError, match="j must be in"):
        exceedance_count(10, 99, 0)
