"""The detector base both kinds share (``pipeline.detect.ensemble``): format and kind checks on load, one
calibration-size rule, the score's standardised terms."""

import json

import numpy as np
import pytest

from pipeline.detect.detector import META_FILE, VAEAnomalyDetector
from pipeline.detect.ensemble import FORMAT_VERSION, EnsembleDetector
from pipeline.detect.image_detector import META_FILE as IMAGE_META_FILE
from pipeline.detect.image_detector import ImageVAEDetector
from pipeline.errors import InputError, ModelError


def test_both_detectors_share_the_base():
    assert issubclass(VAEAnomalyDetector, EnsembleDetector) and issubclass(ImageVAEDetector, EnsembleDetector)
    assert (VAEAnomalyDetector.kind, ImageVAEDetector.kind) == ("table", "image")


@pytest.mark.parametrize("version", [1, 2, 4, None])
def test_a_model_of_another_format_version_is_refused_in_one_line(fitted_detector, tmp_path, version):
    d = fitted_detector.save(tmp_path / "m")
    meta = json.loads((d / META_FILE).read_text())
    assert meta["format_version"] == FORMAT_VERSION == 3 and meta["kind"] == "table"
    meta["format_version"] = version
    (d / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelError) as e:
        VAEAnomalyDetector.load(d)
    assert f"has format {version!r}; this version reads format 3: train the model again" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_model_of_the_other_kind_is_refused(fitted_detector, tmp_path):
    d = fitted_detector.save(tmp_path / "m")
    (d / IMAGE_META_FILE).write_text((d / META_FILE).read_text())  # a table's metadata under the image name
    with pytest.raises(ModelError, match=r"is of kind 'table', expected 'image'"):
        ImageVAEDetector.load(d)


def test_one_calibration_size_rule_words_both_kinds():
    tables = VAEAnomalyDetector(alpha=0.05, cross_fit=False)  # split-conformal only, like the image detector
    images = ImageVAEDetector(alpha=0.05)
    for det, unit in ((tables, "rows"), (images, "images")):
        assert det.calibration_rule(95) == "split"  # 19 = ceil(1 / 0.05) - 1 calibration inputs are enough
        with pytest.raises(InputError) as e:
            det.calibration_rule(90)
        assert str(e.value) == (
            f"alpha=0.05 needs at least 19 calibration {unit}, got 18 (20% of 90 normal training {unit} are "
            f"held out to calibrate): give at least 95 {unit} or raise alpha"
        )
    # a cross-fitted table detector told to split says that cross-conformal calibration needs fewer rows
    with pytest.raises(
        InputError, match=r"give at least 30 rows and calibration='cross' \(or 'auto'\) or raise alpha$"
    ):
        VAEAnomalyDetector(alpha=0.05, calibration="split").calibration_rule(90)


def test_a_members_total_is_its_standardised_terms(fitted_detector):
    det = VAEAnomalyDetector(cosine_weight=2.0, centred_weight=0.5)
    det.score_scale_ = np.array([[1.0, 2.0, 0.0, 1.0, 3.0, 4.0, 5.0, 10.0, 0.5, 0.25]])
    lik, d1, d2, d3, cond = (np.array([v]) for v in (3.0, 7.0, 11.0, 6.0, 1.0))
    want = 0.5 * ((3.0 - 1.0) / 2.0 + (1.0 - 0.5) / 0.25) + 2.0 * (11.0 - 3.0) / 4.0 + 0.5 * (6.0 - 5.0) / 10.0
    # the first distance has weight latent_weight = 0: it adds nothing
    assert det._member_total(0, lik, [d1, d2, d3], cond) == pytest.approx([want])
    no_cond = det._member_total(0, lik, [d1, d2, d3])
    assert no_cond == pytest.approx([(3.0 - 1.0) / 2.0 + 2.0 * 2.0 + 0.05])


def test_bad_shared_parameters_are_refused_for_both_kinds():
    for cls, data in ((VAEAnomalyDetector, None), (ImageVAEDetector, np.zeros((200, 1, 8, 8), np.float32))):
        with pytest.raises(InputError, match=r"n_models must be an integer >= 1, got 0"):
            cls(n_models=0)._check_params()
        with pytest.raises(InputError, match=r"alpha \(target false-positive rate\) must be in \(0, 1\), got 1.5"):
            cls(alpha=1.5)._check_params()
        if data is not None:
            with pytest.raises(InputError, match=r"density_space must be one of \('latent', 'conv'\)"):
                cls(density_space="hidden").fit(data)
