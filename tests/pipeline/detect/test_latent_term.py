"""The image detector's latent density term: the score's formula, calibration on it, save / load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.calibrate.conformal import conformal_threshold
from pipeline.data.split import split_rows
from pipeline.detect.density import robust_scale
from pipeline.detect.image_detector import ImageVAEDetector
from pipeline.detect.model_files import WEIGHTS_FILE
from pipeline.errors import InputError
from vae.config import ImageTrainConfig
from vae.conv import ConvVAE, score_images


def _images(n: int, seed: int) -> np.ndarray:
    """n blurry 8x8 grey images in [0, 1]: a bright square at a random place, plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.2, size=(n, 1, 8, 8))
    for i, (r, c) in enumerate(rng.integers(0, 5, size=(n, 2))):
        x[i, 0, r : r + 3, c : c + 3] += 0.7
    return np.clip(x, 0, 1).astype(np.float32)


def _tiny(**params: object) -> ImageVAEDetector:
    """A tiny conv VAE detector (3-d latent, 2 epochs on CPU) with ``params`` on top."""
    defaults = {"alpha": 0.1, "latent_dim": 3, "conv_channels": (4, 8), "hidden": 16}
    return ImageVAEDetector(**defaults, **params, train_config=ImageTrainConfig(max_epochs=2, device="cpu"))


@pytest.fixture(scope="module")
def fitted() -> tuple[ImageVAEDetector, np.ndarray]:
    """Two tiny VAEs (2 epochs) with the latent term on (k=1, w=0.7), and their 150 training images."""
    X = _images(150, 0)
    det = _tiny(n_models=2, latent_k=1, latent_weight=0.7, density_space="latent")
    return det.fit(X), X


def _rec(m: ConvVAE, x: np.ndarray) -> np.ndarray:
    return score_images(m, torch.from_numpy(x), "recon").double().numpy()


def _mu(m: ConvVAE, x: np.ndarray) -> np.ndarray:
    return m.encode(torch.from_numpy(x))[0].detach().double().numpy()


def _nn(z: np.ndarray, ref: np.ndarray, k: int = 1) -> np.ndarray:
    """Brute-force Euclidean distance from each row of z to its k-th nearest row of ref."""
    return np.sort(np.sqrt(((z[:, None, :] - ref[None, :, :]) ** 2).sum(-1)), axis=1)[:, k - 1]


def _by_hand(det: ImageVAEDetector, X: np.ndarray, k: int = 1) -> np.ndarray:
    """The combined score from its definition: brute-force k-NN to all 150 training images (the validation
    images, references themselves, measured to their 2nd nearest), the median / IQR of the validation images."""
    X_fit = _images(150, 0)
    split = split_rows(len(X_fit), det.val_fraction, det.cal_fraction, det.seed)
    val = X_fit[split.val]
    out = []
    for m in det.models_:
        ref = _mu(m, X_fit)
        m_s, s_s = robust_scale(_rec(m, val))
        m_r, s_r = robust_scale(_nn(_mu(m, val), ref, 2))
        out.append((_rec(m, X) - m_s) / s_s + det.latent_weight * (_nn(_mu(m, X), ref, k) - m_r) / s_r)
    return np.mean(out, axis=0)


def test_combined_score_equals_its_formula_and_is_calibrated_on(fitted):
    det, X = fitted
    new = _images(40, 1)
    scores = det.score_samples(new)
    np.testing.assert_allclose(scores, _by_hand(det, new), rtol=1e-5, atol=1e-5)
    assert np.array_equal(scores, det.score_samples(new))  # deterministic
    split = split_rows(len(X), det.val_fraction, det.cal_fraction, det.seed)
    # the calibration images are references too: their scores leave themselves out (the 2nd nearest)
    np.testing.assert_allclose(det.calibration_scores_, _by_hand(det, X[split.cal], k=2), rtol=1e-5, atol=1e-5)
    assert (det.score_samples(X[split.cal]) < det.calibration_scores_).all()
    assert det.threshold_ == conformal_threshold(det.calibration_scores_, det.alpha)
    assert [c.shape for c in det.latent_codes_] == [(len(X), 3)] * 2


def test_save_load_round_trips_the_latent_state(fitted, tmp_path):
    det, _ = fitted
    new = _images(40, 2)
    d = det.save(tmp_path / "m")
    state = torch.load(d / WEIGHTS_FILE, weights_only=True)
    assert {"latent0", "latent1"} <= set(state)
    loaded = ImageVAEDetector.load(d)
    assert (loaded.latent_k, loaded.latent_weight) == (1, 0.7)
    assert np.array_equal(loaded.score_scale_, det.score_scale_)
    assert np.array_equal(loaded.score_samples(new), det.score_samples(new))


def test_bad_latent_settings_are_refused():
    with pytest.raises(InputError, match="latent_k, latent_weight and cosine_weight must be >= 0"):
        ImageVAEDetector(latent_k=-1).fit(_images(150, 0))
    with pytest.raises(InputError, match=r"density_space must be one of \('latent', 'conv'\), got 'pixels'"):
        ImageVAEDetector(density_space="pixels").fit(_images(150, 0))


def _conv(m: ConvVAE, x: np.ndarray) -> np.ndarray:
    """The encoder's last conv feature map by hand (pad, conv, SiLU, conv, SiLU), flattened."""
    hp, wp = m.config.padded
    t = torch.nn.functional.pad(torch.from_numpy(x), (0, wp - x.shape[-1], 0, hp - x.shape[-2]))
    conv1, conv2 = m.encoder[0], m.encoder[2]
    return torch.nn.functional.silu(conv2(torch.nn.functional.silu(conv1(t)))).flatten(1).detach().double().numpy()


def _unit(f: np.ndarray) -> np.ndarray:
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_conv_density_terms_are_the_distances_between_feature_maps_raw_and_at_unit_length(tmp_path):
    X = _images(150, 0)
    det = _tiny(latent_k=2, latent_weight=1.5, cosine_weight=3.0, density_space="conv").fit(X)
    m = det.models_[0]
    split = split_rows(len(X), det.val_fraction, det.cal_fraction, det.seed)
    train, val, new = _conv(m, X), _conv(m, X[split.val]), _images(40, 3)  # references: all 150 images
    assert det.latent_codes_[0].shape == (len(X), 8 * 2 * 2)  # 8x8 images: 8 channels of 2x2
    assert det.density_weights() == [1.5, 3.0] and det.score_scale_.shape == (1, 6)

    def second_nearest(z: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return np.sort(np.sqrt(((z[:, None, :] - ref[None, :, :]) ** 2).sum(-1)), axis=1)[:, 1]

    def third_nearest(z: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return np.sort(np.sqrt(((z[:, None, :] - ref[None, :, :]) ** 2).sum(-1)), axis=1)[:, 2]

    m_s, s_s = robust_scale(_rec(m, X[split.val]))
    want = (_rec(m, new) - m_s) / s_s
    for w, f in ((1.5, lambda a: a), (3.0, _unit)):
        m_r, s_r = robust_scale(third_nearest(f(val), f(train)))  # each validation image is a reference
        want = want + w * (second_nearest(f(_conv(m, new)), f(train)) - m_r) / s_r
    np.testing.assert_allclose(det.score_samples(new), want, rtol=1e-4, atol=1e-4)
    loaded = ImageVAEDetector.load(det.save(tmp_path / "conv"))
    assert (loaded.density_space, loaded.cosine_weight) == ("conv", 3.0)
    assert np.array_equal(loaded.score_samples(new), det.score_samples(new))
