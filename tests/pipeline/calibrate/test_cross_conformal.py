"""Cross-conformal calibration: the p-value maths, the folds, small tables, and the realised false-positive rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.calibrate.conformal import cross_calibration_scores, cross_conformal_scores, p_values
from pipeline.calibrate.rules import FlagRule
from pipeline.data.split import cross_folds
from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.errors import InputError
from tests.conftest import make_table
from vae.config import TrainConfig


def vovk_p_values(folds: list[np.ndarray], z: np.ndarray) -> np.ndarray:
    """The cross-conformal p-value written out: (1 + sum_k #{r in F_k : z_k(r) >= z_k(x)}) / (n + 1)."""
    n = sum(len(f) for f in folds)
    ge = sum((f[:, None] >= zk[None, :]).sum(axis=0) for f, zk in zip(folds, z, strict=True))
    return (1.0 + ge) / (n + 1.0)


@pytest.mark.parametrize("seed", range(5))
def test_cross_conformal_scores_give_the_cross_conformal_p_value(seed):
    rng = np.random.default_rng(seed)
    # rounded, so that new scores tie with out-of-fold scores
    folds = [np.sort(np.round(rng.normal(size=rng.integers(3, 9)), 1)) for _ in range(4)]
    z = np.round(rng.normal(size=(4, 200)) * 1.5, 1)
    s = cross_conformal_scores(folds, z)
    n = sum(len(f) for f in folds)
    np.testing.assert_array_equal(p_values(s, cross_calibration_scores(n)), vovk_p_values(folds, z))
    # within the same count of exceeded scores, rows are ranked by their mean member score
    same = np.floor(s) == np.floor(s)[0]
    mean = z.mean(axis=0)
    assert same.sum() > 1 and (np.diff(mean[same][np.argsort(s[same])]) >= -1e-12).all()


def test_cross_conformal_scores_keep_a_non_finite_mean_and_separate_huge_scores():
    folds = [np.array([0.0, 1.0]), np.array([0.5])]
    s = cross_conformal_scores(folds, np.array([[np.inf, 1e300, 2.0], [0.0, 1e300, np.nan]]))
    assert s[0] == np.inf and np.isnan(s[2])
    assert 3.0 < s[1] < 4.0  # above every out-of-fold score, never rounded up to the next count


def test_cross_folds_hold_every_row_out_exactly_once():
    folds = cross_folds(23, 5, seed=3)
    held = np.concatenate([h for _, _, h in folds])
    assert sorted(held.tolist()) == list(range(23))
    for train, val, out in folds:  # a member never sees its held-out fold, not even to early-stop
        assert len(np.union1d(np.union1d(train, val), out)) == len(train) + len(val) + len(out) == 23
    with pytest.raises(InputError, match="n_models >= 3"):
        cross_folds(23, 2, seed=0)


def fast(seed: int) -> TrainConfig:
    return TrainConfig(seed=seed, max_epochs=40)


def test_thirty_rows_train_score_and_reload_cross_conformal(tmp_path):
    df, _ = make_table(30, seed=4)
    det = VAEAnomalyDetector(alpha=0.05, id_columns=["id"], train_config=fast(4), seed=4).fit(df)
    assert det.calibration_rule_ == "cross" and len(det.calibration_scores_) == 30
    assert sum(len(f) for f in det.fold_scores_) == 30 and det.n_rows_["train"] == 30
    new, _ = make_table(50, seed=5)
    s = det.score_samples(new)
    assert np.isfinite(s).all()
    det.save(tmp_path / "m")
    loaded = VAEAnomalyDetector.load(tmp_path / "m")
    assert loaded.calibration_rule_ == "cross" and loaded.threshold_ == det.threshold_
    np.testing.assert_array_equal(loaded.score_samples(new), s)


def test_too_few_rows_name_the_minimum():
    df, _ = make_table(29, seed=0)
    with pytest.raises(InputError, match=r"^alpha=0.05 needs at least 30 normal training rows, got 29"):
        VAEAnomalyDetector(alpha=0.05, id_columns=["id"]).fit(df)
    with pytest.raises(InputError, match=r"alpha=0.01 needs at least 99 normal training rows, got 60"):
        VAEAnomalyDetector(alpha=0.01, id_columns=["id"]).fit(make_table(60)[0])
    with pytest.raises(InputError, match=r"calibration='cross' needs a cross-fitted ensemble"):
        VAEAnomalyDetector(calibration="cross", cross_fit=False).fit(make_table(60)[0])


@pytest.mark.parametrize(
    ("n", "alpha", "rule"), [(150, 0.05, "cross"), (1200, 0.05, "split"), (2000, 0.01, "cross"), (2500, 0.01, "split")]
)
def test_auto_picks_split_only_with_enough_calibration_rows(n, alpha, rule):
    det = VAEAnomalyDetector(alpha=alpha)
    assert det.calibration_rule(n) == rule


def test_realised_false_positive_rate_of_small_tables_is_at_most_alpha():
    """Over 16 tables of 40 normal rows, the mean share of new normal rows flagged at alpha = 0.1 stays within
    alpha plus three standard errors of that mean (measured over the tables)."""
    alpha, rates = 0.1, []
    new, _ = make_table(3000, seed=999)
    for seed in range(16):
        df, _ = make_table(40, seed=100 + seed)
        det = VAEAnomalyDetector(alpha=alpha, id_columns=["id"], train_config=fast(seed), seed=seed).fit(df)
        assert det.calibration_rule_ == "cross"
        rates.append(float((det.score_samples(new) > det.threshold_).mean()))
    mean, se = float(np.mean(rates)), float(np.std(rates, ddof=1) / np.sqrt(len(rates)))
    print(mean, se)
    assert mean <= alpha + 3 * se, (mean, se, rates)


@pytest.fixture(scope="module")
def small_model():
    df, _ = make_table(40, seed=6)
    return VAEAnomalyDetector(alpha=0.05, id_columns=["id"], train_config=fast(6), seed=6).fit(df)


def test_a_cross_conformal_report_flags_by_its_p_value(small_model, tmp_path):
    from pipeline.score.scoring import score_file

    df, _ = make_table(300, seed=7, anomalies=30)
    df.to_csv(tmp_path / "new.csv", index=False)
    summary = score_file(small_model, tmp_path / "new.csv", tmp_path / "out")
    report = pd.read_csv(summary.report)
    assert report["row"].tolist() == list(range(300))
    assert (report["is_anomaly"] == (report["score"] > report["threshold"])).all()
    assert (report["is_anomaly"] == (report["p_value"] <= 0.05)).all()
    assert summary.calibration.startswith("cross-conformal over 5 folds of 40 normal training rows")


@pytest.mark.parametrize("rule", [FlagRule("fdr", 0.1), FlagRule("conditional", 0.05, 0.1)])
def test_rules_proved_only_for_split_conformal_p_values_are_refused(small_model, tmp_path, rule):
    from pipeline.score.scoring import score_file

    make_table(20, seed=8)[0].to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(InputError, match=rf"^the {rule.kind} flag rule needs a split-conformal model; .*40 normal"):
        score_file(small_model, tmp_path / "new.csv", tmp_path / "out", rule=rule)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_each_vae_is_standardised_on_its_validation_fold_and_calibrated_on_the_fold_it_never_saw(small_model):
    from vae.score import score_rows

    df, _ = make_table(40, seed=6)
    folds = cross_folds(40, 5, seed=6)
    members = zip(small_model.models_, small_model.score_scale_, folds, strict=True)
    for i, (m, scale, (train, val, held)) in enumerate(members):
        assert not np.intersect1d(np.r_[train, val], held).size
        median = np.median(score_rows(m, small_model.batch(df.iloc[val]), k=small_model.n_draws).double().numpy())
        assert np.isclose(median, scale[0])
        # the out-of-fold scores are VAE i's scores of its held-out rows, each leaving itself out of the references
        own = np.ones(len(held), dtype=bool)
        passes, searches = small_model._passes(small_model.batch(df.iloc[held]), explain=False, own=own, only=i)
        np.testing.assert_allclose(
            np.sort(small_model._member_scores(passes, searches, only=i)[0]), small_model.fold_scores_[i], rtol=1e-6
        )
