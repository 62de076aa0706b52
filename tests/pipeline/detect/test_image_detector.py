"""The image detector: quality floor, calibration, save/load, reports and contact sheets."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipeline.calibrate.rules import FlagRule
from pipeline.data.images import read_images
from pipeline.detect.image_detector import ImageVAEDetector, is_image_model_dir
from pipeline.detect.model_files import WEIGHTS_FILE
from pipeline.errors import InputError, ModelError
from pipeline.score.image_scoring import score_image_frame, score_images_batch


def _batch_with_labels(digit_files):
    images = read_images(digit_files.new_batch, mode="L", size=(8, 8))
    labels = pd.read_csv(digit_files.labels).set_index("path").loc[images.paths, "is_anomaly"].to_numpy()
    return images, labels


def test_quality_floor_on_sklearn_digits(image_detector, digit_files):
    images, y = _batch_with_labels(digit_files)
    scores = image_detector.score_samples(images.pixels)
    assert roc_auc_score(y, scores) > 0.97
    assert image_detector.n_rows_ == {"train": 89, "val": 21, "cal": 28}
    # split-conformal: the threshold is the ceil((n+1)(1-alpha))-th smallest calibration score
    cal = np.sort(image_detector.calibration_scores_)
    assert image_detector.threshold_ == cal[int(np.ceil(29 * 0.95)) - 1]
    assert image_detector.predict(images.pixels).tolist() == (scores > image_detector.threshold_).astype(int).tolist()


def test_save_load_round_trip_gives_identical_scores(image_detector, digit_files, tmp_path):
    images, _ = _batch_with_labels(digit_files)
    d = image_detector.save(tmp_path / "m")
    assert is_image_model_dir(d) and not is_image_model_dir(tmp_path)
    torch.load(d / WEIGHTS_FILE, weights_only=True)  # tensors only
    loaded = ImageVAEDetector.load(d)
    assert np.array_equal(loaded.score_samples(images.pixels), image_detector.score_samples(images.pixels))
    assert loaded.threshold_ == image_detector.threshold_ and loaded.image_size == (8, 8)
    os.remove(d / WEIGHTS_FILE)
    with pytest.raises(ModelError, match=r"incomplete: weights\.pt is missing"):
        ImageVAEDetector.load(d)


def test_errors_name_the_bad_value(image_detector):
    with pytest.raises(InputError, match=r"images of shape \(3, 8, 8\) \(C, H, W\), the model expects \(1, 8, 8\)"):
        image_detector.score_samples(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match=r"99 calibration images, got 20 .* give at least 495 images"):
        ImageVAEDetector(alpha=0.01).fit(np.zeros((100, 1, 8, 8), np.float32))
    with pytest.raises(InputError, match="likelihood must be one of"):
        ImageVAEDetector(likelihood="poisson").fit(np.zeros((100, 1, 8, 8), np.float32))
    with pytest.raises(ModelError, match="not fitted yet"):
        ImageVAEDetector().score_samples(np.zeros((1, 1, 8, 8), np.float32))


def test_report_contract_and_contact_sheet(image_detector, digit_files, tmp_path):
    s = score_images_batch(image_detector, digit_files.new_batch, tmp_path, model_uri="models:/m@a", top_k=5)
    report = pd.read_csv(s.report)
    assert s.report.endswith("new_batch.anomalies.csv") and s.rows == len(report) == 130
    assert list(report.columns) == ["path", "score", "threshold", "is_anomaly", "p_value", "error"]
    assert report["path"].iloc[0] == "0/0020.png"  # relative to the input folder, sorted
    assert (report["is_anomaly"] == (report["score"] > report["threshold"])).all()
    assert report["p_value"].between(0, 1).all() and s.flagged == int(report["is_anomaly"].sum())
    from PIL import Image

    with Image.open(s.contact_sheet) as im:
        assert im.format == "PNG" and im.height > im.width  # one row per top-k image
    fdr = score_images_batch(
        image_detector, digit_files.new_batch, tmp_path / "fdr", rule=FlagRule("fdr", 0.1), top_k=0
    )
    rep = pd.read_csv(fdr.report)
    assert "q_value" in rep.columns and ((rep["q_value"] <= 0.1) == (rep["is_anomaly"] == 1)).all()
    assert fdr.contact_sheet is None


def test_pyfunc_path_scoring_matches_the_batch_report(image_detector, digit_files, tmp_path):
    s = score_images_batch(image_detector, digit_files.new_batch, tmp_path, top_k=0)
    report = pd.read_csv(s.report)
    paths = [str(digit_files.new_batch / p) for p in report["path"]] + [str(digit_files.new_batch / "missing.png")]
    pred = score_image_frame(image_detector, pd.DataFrame({"path": paths}), image_root=digit_files.new_batch)
    assert np.allclose(pred["score"].to_numpy()[:-1], report["score"].to_numpy(), rtol=1e-7)
    assert np.isnan(pred["score"].iloc[-1]) and pred["error"].iloc[-1].endswith(
        "is not a readable file under the allowed root"
    )
    with pytest.raises(InputError, match="send the images' bytes base64-encoded in an 'image' column"):
        score_image_frame(image_detector, pd.DataFrame({"path": paths}))  # no root: paths are refused
    with pytest.raises(InputError, match="takes a column 'image'"):
        score_image_frame(image_detector, pd.DataFrame({"file": paths}))


def test_generative_helpers_shapes(image_detector):
    assert image_detector.sample(5, seed=1).shape == (5, 1, 8, 8)
    assert np.array_equal(image_detector.sample(3, seed=1), image_detector.sample(3, seed=1))
    z = image_detector.encode(np.zeros((2, 1, 8, 8), np.float32))
    assert z.shape == (2, 16) and image_detector.decode(z).shape == (2, 1, 8, 8)
