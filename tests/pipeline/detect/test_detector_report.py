"""The detector end to end (quality floor, determinism, save/load) and the report writer."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.errors import InputError, ModelError
from pipeline.score.report import build_report, neutralise_cell, write_csv_atomic
from pipeline.score.scoring import score_file
from tests.conftest import make_table


def test_quality_floor_on_seeded_synthetic_data(fitted_detector, test_table):
    df, y = test_table
    assert roc_auc_score(y, fitted_detector.score_samples(df)) > 0.9


def test_threshold_is_learned_and_predict_is_binary(fitted_detector, test_table):
    df, y = test_table
    pred = fitted_detector.predict(df)
    assert set(np.unique(pred)) <= {0, 1}
    assert fitted_detector.n_rows_["cal"] == 300
    assert pred[y == 0].mean() < 0.12  # alpha = 0.05 on normal rows


def test_scores_are_deterministic_and_row_local(fitted_detector, test_table):
    df, _ = test_table
    s = fitted_detector.score_samples(df)
    assert np.array_equal(s, fitted_detector.score_samples(df))
    assert np.allclose(s[100:110], fitted_detector.score_samples(df.iloc[100:110]), rtol=1e-5)


def test_save_load_round_trip(fitted_detector, test_table, tmp_path):
    df, _ = test_table
    fitted_detector.save(tmp_path / "m")
    loaded = VAEAnomalyDetector.load(tmp_path / "m")
    assert loaded.threshold_ == fitted_detector.threshold_
    assert np.array_equal(loaded.score_samples(df), fitted_detector.score_samples(df))


def test_load_names_the_missing_file(fitted_detector, tmp_path):
    fitted_detector.save(tmp_path / "m")
    (tmp_path / "m" / "weights.pt").unlink()
    with pytest.raises(ModelError, match=r"model folder .* is incomplete: weights.pt is missing"):
        VAEAnomalyDetector.load(tmp_path / "m")


def test_missing_values_and_unseen_categories_are_scored(fitted_detector, test_table):
    df, _ = test_table
    odd = df.head(5).copy()
    odd.loc[odd.index[0], "a"] = np.nan
    odd.loc[odd.index[1], "shape"] = "hexagon"
    odd.loc[odd.index[2], "color"] = np.nan
    s = fitted_detector.score_samples(odd)
    base = fitted_detector.score_samples(df.head(5))
    assert np.isfinite(s).all()
    assert np.array_equal(s[3:], base[3:])  # a row's score depends on its own values only
    assert s[1] > base[1]  # a category never seen in training makes the row more anomalous
    # a missing cell is left out of the likelihood: it adds nothing to the row's per-feature NLL
    nll = fitted_detector.explain_validated(fitted_detector.schema_.validate(odd, require_ids=False)).nll
    features = list(fitted_detector.schema_.features)
    assert nll[0, features.index("a")] == 0 and nll[2, features.index("color")] == 0
    assert nll[1, features.index("a")] > 0 and nll[0, features.index("color")] > 0


def test_labelled_anomalies_are_kept_out_of_training():
    df, y = make_table(800, seed=3, anomalies=40)
    det = VAEAnomalyDetector(
        alpha=0.1,
        id_columns=["id"],
        label_column="label",
        train_config=__import__("vae.config").config.TrainConfig(max_epochs=3),
    )
    det.fit(df.assign(label=y))
    assert det.n_rows_["excluded_anomalies"] == 40
    assert sum(det.n_rows_[k] for k in ("train", "val", "cal")) == 760


def test_too_little_data_for_alpha_says_what_to_do():
    df, _ = make_table(98, seed=0)
    with pytest.raises(
        InputError, match=r"^alpha=0.01 needs at least 99 normal training rows, got 98: give at least 99"
    ):
        VAEAnomalyDetector(alpha=0.01, id_columns=["id"]).fit(df)
    with pytest.raises(InputError, match=r"alpha=0.01 needs at least 99 calibration rows, got 20 .* give at least 495"):
        VAEAnomalyDetector(alpha=0.01, id_columns=["id"], cross_fit=False).fit(make_table(100)[0])


def test_report_has_one_row_per_input_row_in_order(fitted_detector, test_table, tmp_path):
    df, _ = test_table
    src = tmp_path / "batch.csv"
    df.to_csv(src, index=False)
    summary = score_file(fitted_detector, src, tmp_path / "out")
    report = pd.read_csv(summary.report, dtype={"id": str})
    assert list(report.columns) == [
        "row",
        "id",
        "score",
        "threshold",
        "is_anomaly",
        "p_value",
        "top_features",
        "top_observed",
        "top_expected",
        "missing",
    ]
    assert report["row"].tolist() == list(range(len(df)))
    assert report["id"].tolist() == df["id"].tolist()
    assert summary.rows == len(df) and summary.flagged == int(report["is_anomaly"].sum())
    first = (tmp_path / "out" / "batch.anomalies.csv").read_bytes()
    score_file(fitted_detector, src, tmp_path / "out")
    assert (tmp_path / "out" / "batch.anomalies.csv").read_bytes() == first
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_score_file_errors_name_the_file_and_column(fitted_detector, test_table, tmp_path):
    df, _ = test_table
    src = tmp_path / "nocol.csv"
    df.drop(columns=["shape"]).to_csv(src, index=False)
    with pytest.raises(InputError, match=r"nocol.csv: missing column\(s\) \['shape'\]"):
        score_file(fitted_detector, src, tmp_path / "out")
    assert not (tmp_path / "out" / "nocol.anomalies.csv").exists()


def test_formula_cells_are_neutralised_but_numbers_are_not():
    assert neutralise_cell('=HYPERLINK("x")') == '\'=HYPERLINK("x")'
    assert neutralise_cell("-12.5") == "-12.5"
    assert neutralise_cell("@SUM(A1)") == "'@SUM(A1)"
    assert neutralise_cell(3) == 3


def test_atomic_write_leaves_no_partial_file(tmp_path):
    frame = build_report(pd.DataFrame({"id": ["a", "b"]}), np.array([1.0, 5.0]), 2.0, ["id"])
    p = write_csv_atomic(frame, tmp_path / "r.csv")
    assert p.read_text() == "row,id,score,threshold,is_anomaly\n0,a,1,2,0\n1,b,5,2,1\n"


def test_ensemble_scores_are_the_mean_of_its_members_and_survive_save_load(tmp_path):
    from vae.config import TrainConfig
    from vae.score import score_rows

    df, _ = make_table(400, seed=5)
    det = VAEAnomalyDetector(
        alpha=0.1, id_columns=["id"], n_models=2, latent_k=0, train_config=TrainConfig(max_epochs=5)
    ).fit(df)
    assert len(det.models_) == 2 and len(det.histories_) == 2
    batch = det.batch(df.head(20))
    members = [score_rows(m, batch, k=det.n_draws).double().numpy() for m in det.models_]
    assert not np.allclose(members[0], members[1])  # different seeds, different members
    assert np.allclose(det.score_samples(df.head(20)), np.mean(members, axis=0))
    det.save(tmp_path / "ens")
    assert np.array_equal(VAEAnomalyDetector.load(tmp_path / "ens").score_samples(df), det.score_samples(df))


def test_latent_term_combines_standardised_elbo_and_knn_distance_and_survives_save_load(tmp_path):
    from pipeline.detect.density import LatentKNN
    from vae.config import TrainConfig
    from vae.score import posterior_means, score_rows

    df, _ = make_table(400, seed=5)
    det = VAEAnomalyDetector(
        alpha=0.1,
        id_columns=["id"],
        n_models=2,
        latent_k=3,
        latent_weight=0.5,
        density_space="latent",
        conditional_groups=0,
        train_config=TrainConfig(max_epochs=5),
    ).fit(df)
    assert det.score_scale_.shape == (2, 4) and len(det.latent_codes_) == 2
    n_ref = det.n_rows_["train"] + det.n_rows_["val"] + det.n_rows_["cal"]  # all the normal rows
    assert det.latent_codes_[0].shape == (n_ref, det.model_config_.latent_dim)
    batch = det.batch(df.head(20))
    expected = []
    for m, codes, (m_e, s_e, m_r, s_r) in zip(det.models_, det.latent_codes_, det.score_scale_, strict=True):
        r = LatentKNN(codes, 3).distance(posterior_means(m, batch))
        expected.append((score_rows(m, batch, k=det.n_draws).double().numpy() - m_e) / s_e + 0.5 * (r - m_r) / s_r)
    assert np.allclose(det.score_samples(df.head(20)), np.mean(expected, axis=0))
    # the threshold is set on the combined score of the calibration rows
    assert det.threshold_ == pytest.approx(np.sort(det.calibration_scores_)[int(np.ceil(0.9 * 81)) - 1])
    det.save(tmp_path / "lat")
    loaded = VAEAnomalyDetector.load(tmp_path / "lat")
    assert loaded.latent_k == 3 and loaded.latent_weight == 0.5
    assert np.array_equal(loaded.score_samples(df), det.score_samples(df))


def _nn_distance(codes: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
    """k-th nearest-neighbour distance by brute force, independent of pipeline.detect.density."""
    d = np.sqrt(((codes[:, None, :] - ref[None, :, :].astype(np.float64)) ** 2).sum(axis=2))
    return np.sort(d, axis=1)[:, k - 1]


def _conditional_nll(m, batch, groups: int) -> np.ndarray:
    """The masked conditional NLL written out feature group by feature group, independent of vae.score."""
    import torch

    from vae.elbo import feature_nll
    from vae.model import MISSING, TabularBatch

    n_num = batch.x_num.shape[1]
    n_feat = n_num + batch.x_cat.shape[1]
    total = np.zeros(len(batch))
    with torch.no_grad():
        for g in range(min(groups, n_feat)):
            hidden = [j for j in range(n_feat) if j % groups == g]
            mask, codes = batch.mask_num.clone(), batch.x_cat.clone()
            for j in hidden:
                if j < n_num:
                    mask[:, j] = 0.0
                else:
                    codes[:, j - n_num] = MISSING
            mu, _ = m.encode(TabularBatch(batch.x_num, mask, codes))
            total += feature_nll(m, batch, mu).double().numpy()[:, hidden].sum(axis=1)
    return total


def _small_fit(df: pd.DataFrame, epochs: int, **params: object) -> VAEAnomalyDetector:
    """A detector at alpha 0.1 with id column ``id``, fitted for ``epochs`` epochs with ``params`` on top."""
    from vae.config import TrainConfig

    return VAEAnomalyDetector(alpha=0.1, id_columns=["id"], train_config=TrainConfig(max_epochs=epochs), **params).fit(
        df
    )


def test_hidden_density_terms_follow_their_formula_and_survive_save_load(tmp_path):
    """Density space: the encoder's last hidden layer; the codes as they are, at unit length and centred at unit
    length, each term standardised on the validation rows, and the likelihood part the mean of the standardised
    -ELBO and masked conditional NLL; checked against distances computed by brute force."""
    from vae.score import encoder_features, score_rows

    df, _ = make_table(400, seed=7)
    det = _small_fit(
        df, 5, n_models=2, latent_k=2, latent_weight=0.7, cosine_weight=1.3, centred_weight=0.9, conditional_groups=3
    )
    width = det.model_config_.hidden[-1]
    assert det.density_space == "hidden" and det.density_weights() == [0.7, 1.3, 0.9]
    assert det.score_scale_.shape == (2, 10)  # -ELBO, 3 density terms, conditional NLL: (median, IQR) each
    assert [c.shape for c in det.latent_codes_] == [(len(df), width)] * 2  # every row is a reference
    # the validation rows are references too: their distances leave themselves out (the (k+1)-th)
    from pipeline.data.split import member_folds, split_rows
    from pipeline.detect.density import robust_scale

    # cross-fitted: each VAE's terms are standardised on its own validation rows
    split = split_rows(len(df), det.val_fraction, det.cal_fraction, det.seed)
    folds = member_folds(split, 2, det.seed)
    assert not np.array_equal(folds[0][1], folds[1][1])
    for m, ref, scale, (_, rows) in zip(det.models_, det.latent_codes_, det.score_scale_, folds, strict=True):
        val = det.batch(df.iloc[rows])
        assert np.allclose(robust_scale(_nn_distance(encoder_features(m, val), ref, 3)), scale[2:4], rtol=1e-5)
        assert np.allclose(robust_scale(_conditional_nll(m, val, 3)), scale[8:10], rtol=1e-5)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731

    def formula(rows, k):
        batch, expected = det.batch(rows), []
        for m, ref, scale in zip(det.models_, det.latent_codes_, det.score_scale_, strict=True):
            h = encoder_features(m, batch)
            ref64 = ref.astype(np.float64)
            raw = _nn_distance(h, ref, k)
            cos = _nn_distance(unit(h).astype(np.float32).astype(np.float64), unit(ref64), k)
            centre = ref64.mean(axis=0)
            cen = _nn_distance(
                unit(h - centre).astype(np.float32).astype(np.float64),
                unit(ref64 - centre).astype(np.float32).astype(np.float64),
                k,
            )
            e = (score_rows(m, batch, k=det.n_draws).double().numpy() - scale[0]) / scale[1]
            c = (_conditional_nll(m, batch, 3) - scale[8]) / scale[9]
            expected.append(
                0.5 * (e + c)
                + 0.7 * (raw - scale[2]) / scale[3]
                + 1.3 * (cos - scale[4]) / scale[5]
                + 0.9 * (cen - scale[6]) / scale[7]
            )
        return np.mean(expected, axis=0)

    assert np.allclose(det.score_samples(df.head(25)), formula(df.head(25), 2), atol=1e-5)
    # the calibration rows are references too: their scores (which set the threshold) leave themselves
    # out, the (k+1)-th nearest, where scoring them as new rows would find themselves at distance 0
    cal = df.iloc[split.cal]
    assert np.allclose(det.calibration_scores_, formula(cal, 3), atol=1e-5)
    assert (det.score_samples(cal) < det.calibration_scores_).all()
    det.save(tmp_path / "hid")
    loaded = VAEAnomalyDetector.load(tmp_path / "hid")
    assert (
        loaded.density_space,
        loaded.latent_weight,
        loaded.cosine_weight,
        loaded.centred_weight,
        loaded.conditional_groups,
    ) == ("hidden", 0.7, 1.3, 0.9, 3)
    assert np.array_equal(loaded.score_samples(df), det.score_samples(df))


def test_a_term_of_weight_zero_is_not_searched_and_changes_nothing():

    df, _ = make_table(300, seed=4)
    det = _small_fit(df, 3, n_models=1, latent_weight=0.0, cosine_weight=1.0, centred_weight=1.0)
    det.score_samples(df.head(5))
    assert det._latent_knns()[0][0] is None and det._latent_knns()[0][1] is not None


def test_cross_fitting_gives_each_vae_its_own_validation_rows_and_can_be_turned_off(tmp_path):
    from pipeline.data.split import member_folds, split_rows
    from vae.config import TrainConfig
    from vae.score import score_rows

    df, _ = make_table(300, seed=4)
    split = split_rows(len(df), 0.15, 0.2, 0)
    folds = member_folds(split, 3, 0)
    kw = {
        "alpha": 0.1,
        "id_columns": ["id"],
        "n_models": 3,
        "calibration": "split",
        "train_config": TrainConfig(max_epochs=3),
    }
    for cross_fit, vals in ((True, [v for _, v in folds]), (False, [split.val] * 3)):
        det = VAEAnomalyDetector(cross_fit=cross_fit, **kw).fit(df)
        for m, scale, rows in zip(det.models_, det.score_scale_, vals, strict=True):  # each -ELBO's median
            assert np.isclose(
                np.median(score_rows(m, det.batch(df.iloc[rows]), k=det.n_draws).double().numpy()), scale[0]
            )
        assert det.n_rows_ == {
            "train": len(split.train),
            "val": len(split.val),
            "cal": len(split.cal),
            "excluded_anomalies": 0,
        }
    assert det.params()["cross_fit"] is False
    loaded = VAEAnomalyDetector.load(det.save(tmp_path / "m"))
    assert loaded.cross_fit is False and np.array_equal(loaded.score_samples(df), det.score_samples(df))


def test_bad_density_settings_are_refused():
    df, _ = make_table(300, seed=9)
    with pytest.raises(InputError, match=r"density_space must be one of \('hidden', 'latent'\), got 'input'"):
        VAEAnomalyDetector(alpha=0.1, id_columns=["id"], density_space="input").fit(df)
    with pytest.raises(InputError, match=r"latent_k, latent_weight and cosine_weight must be >= 0, got 1, 0\.0 and -1"):
        VAEAnomalyDetector(alpha=0.1, id_columns=["id"], cosine_weight=-1).fit(df)
    with pytest.raises(InputError, match=r"conditional_groups an integer >= 0, got 1\.0 and 2\.5"):
        VAEAnomalyDetector(alpha=0.1, id_columns=["id"], conditional_groups=2.5).fit(df)
