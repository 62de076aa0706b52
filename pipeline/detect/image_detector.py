"""The image estimator: fit / score_samples / predict, save / load, for a convolutional VAE.

Like :class:`pipeline.detect.detector.VAEAnomalyDetector` for tables: the normal training images are split
(seeded) into train / validation (early stopping) / calibration (threshold only, never fitted on); the
split-conformal threshold, the calibration scores and the image format (mode, size) travel inside the
saved model, so serving cannot drift from training.

With ``latent_k >= 1`` each VAE's score adds a density term (as the tabular detector does, see
:mod:`pipeline.detect.density`): (score(x) - m_s) / s_s + w * (r_k(x) - m_r) / s_r, r_k the distance from the image's
code to the k-th nearest training image's code (all the training images: training, validation and calibration;
those measure themselves leaving themselves out), each term standardised by its median / IQR on the validation
images. The code (``density_space``) is either the posterior mean mu(x) (``latent``) or, by default, the
encoder's last convolutional feature map, flattened and scaled to unit length (``conv``: a cosine-type
distance between what the encoder sees, the "deep nearest neighbour" of Bergman et al. 2020 with the VAE's
own encoder as the feature extractor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.split import split_rows
from pipeline.detect.density import MAX_REFERENCE_ROWS
from pipeline.detect.ensemble import EnsembleDetector
from pipeline.errors import InputError, ModelError
from vae.config import ImageTrainConfig
from vae.conv import CONV, IMAGE_LIKELIHOODS, IMAGE_SCORE_METHODS, ConvVAE, ConvVAEConfig, reconstruct, score_images
from vae.fit_plan import TrainHistory
from vae.trainer import fit_members

META_FILE = "image_detector.json"  # its presence marks an image model folder
CHUNK = 1024
# Reference codes kept per VAE for the conv space: at most this many bytes (float32), a seeded subsample beyond.
# Fashion-MNIST (1,568 values per image, 6,000 training images): 38 MB, all of them.
MAX_CONV_CODE_BYTES = 64 * 2**20


class ImageVAEDetector(EnsembleDetector):
    """Convolutional VAE anomaly detector for images; higher score = more anomalous.

    Args:
        alpha: target false-positive rate of the calibrated threshold.
        latent_dim, conv_channels, hidden: network size (see :class:`vae.conv.ConvVAEConfig`).
        likelihood: pixel likelihood, ``gaussian`` (default), ``bernoulli`` or ``cbernoulli``.
        score_method: ``recon`` (reconstruction NLL at the posterior mean, default), ``elbo`` or ``iwae``.
        n_draws: fixed Monte Carlo draws per image for ``elbo`` / ``iwae``.
        n_models: ensemble size: VAEs trained from seeds ``seed, seed+1, ...``; the score is their mean.
        latent_k: with k >= 1, each VAE's score adds density terms (see the module docstring): standardised
            distances from the image's code to the k-th nearest training image's code; 0 turns them off.
        latent_weight: weight of the first density term: mu(x) in the ``latent`` space, the raw conv feature
            map in the ``conv`` space.
        cosine_weight: (``conv`` space) weight of the second density term, the same feature maps scaled to
            unit length (their distance is a monotone function of the cosine dissimilarity).
        density_space: ``conv`` (default) or ``latent``.
        val_fraction, cal_fraction: shares of the training images held out for early stopping / calibration.
        train_config: trainer settings (epochs, batch size, device...); the seed is overridden by ``seed``.
        seed: seeds the split and the trainer.

    The defaults (network size, likelihood, density space and weights) were chosen on one-vs-rest
    benchmarks: docs/images.md and docs/decisions/ give the evidence.
    """

    kind = "image"
    meta_file = META_FILE
    density_spaces = ("latent", "conv")
    unit = "images"

    def __init__(
        self,
        *,
        alpha: float = 0.01,
        latent_dim: int = 16,
        conv_channels: tuple[int, int] = (16, 32),
        hidden: int = 256,
        likelihood: str = "gaussian",
        score_method: str = "recon",
        n_draws: int = 16,
        n_models: int = 1,
        latent_k: int = 5,
        latent_weight: float = 2.0,
        cosine_weight: float = 4.0,
        density_space: str = "conv",
        val_fraction: float = 0.15,
        cal_fraction: float = 0.2,
        train_config: ImageTrainConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.alpha = alpha
        self.latent_dim = latent_dim
        self.conv_channels = conv_channels
        self.hidden = hidden
        self.likelihood = likelihood
        self.score_method = score_method
        self.n_draws = n_draws
        self.n_models = n_models
        self.latent_k = latent_k
        self.latent_weight = latent_weight
        self.cosine_weight = cosine_weight
        self.density_space = density_space
        self.val_fraction = val_fraction
        self.cal_fraction = cal_fraction
        self.train_config = train_config
        self.seed = seed

    # ----------------------------------------------------------------- fit
    def fit(self, X: np.ndarray) -> ImageVAEDetector:
        """Split, train the VAE(s) on normal images X (n, C, H, W) in [0, 1], calibrate the threshold.

        Raises:
            InputError: bad parameters, or too few images for ``alpha`` (says how many are needed).
        """
        self._check_params()
        if self.likelihood not in IMAGE_LIKELIHOODS:
            raise InputError(f"likelihood must be one of {IMAGE_LIKELIHOODS}, got {self.likelihood!r}")
        if self.score_method not in IMAGE_SCORE_METHODS:
            raise InputError(f"score_method must be one of {IMAGE_SCORE_METHODS}, got {self.score_method!r}")
        X = _as_images(X)
        n = len(X)
        split = split_rows(n, self.val_fraction, self.cal_fraction, self.seed)
        self.calibration_rule(n)
        c, h, w = X.shape[1:]
        self.config_ = ConvVAEConfig(
            channels=c,
            height=h,
            width=w,
            latent_dim=self.latent_dim,
            conv_channels=tuple(self.conv_channels),
            hidden=self.hidden,
            likelihood=self.likelihood,
        )
        tc = self.train_config or ImageTrainConfig()
        # Every VAE trains on the training images and early-stops on the validation images, from its own seed.
        pool = torch.from_numpy(np.concatenate([X[split.train], X[split.val]]))
        n_train = len(split.train)
        train_rows = [torch.arange(n_train)] * self.n_models
        val_rows = [torch.arange(n_train, len(pool))] * self.n_models
        self.models_ = [ConvVAE(self.config_) for _ in range(self.n_models)]
        seeds = [self.seed + i for i in range(self.n_models)]
        self.histories_ = fit_members(self.models_, CONV, pool, train_rows, val_rows, tc.plan(n_train), seeds)
        self.history_: TrainHistory = self.histories_[0]
        cal_own = self._fit_latent_density(X[split.train], X[split.val], X[split.cal])
        cal_scores = self._score(X[split.cal], cal_own)
        if not np.isfinite(cal_scores).all():
            raise InputError("some calibration images have non-finite scores: the training diverged; lower lr")
        self._calibrate(cal_scores)
        self.n_rows_ = {"train": len(split.train), "val": len(split.val), "cal": len(split.cal)}
        return self

    def _fit_latent_density(self, X_train: np.ndarray, X_val: np.ndarray, X_cal: np.ndarray) -> np.ndarray:
        """Reference codes of each VAE and the validation medians / IQRs of every score term.

        The references are all the training images: the training, validation and calibration images (a
        seeded sample beyond the cap). A validation or calibration image that is a reference is measured
        leaving itself out (the (k+1)-th nearest), so its distance is what a new image's would be.

        Returns:
            (n_cal,) bool: which calibration images are references (for :meth:`_score`).
        """
        self.latent_codes_: list[np.ndarray] = []
        self.score_scale_: np.ndarray | None = None
        self._knn = self._centre = None
        if not self.latent_k:
            return np.zeros(len(X_cal), dtype=bool)
        cap = MAX_REFERENCE_ROWS
        if self.density_space == "conv":
            cap = max(MAX_CONV_CODE_BYTES // (4 * self.config_.feature_dim), 1)
        n_train, n_val = len(X_train), len(X_val)
        pool = np.concatenate([X_train, X_val, X_cal])
        own = self._fit_references(len(pool), cap, lambda m, pick: self._density_codes(m, pool[pick]))
        scale = []
        for i, m in enumerate(self.models_):
            dists = self._distances(i, self._density_codes(m, X_val), own[n_train : n_train + n_val])
            scale.append(self._scale_row(self._member_scores(m, X_val), dists, None))
        self.score_scale_ = np.asarray(scale, dtype=np.float64)
        return own[n_train + n_val :]

    def _density_codes(self, model: ConvVAE, X: np.ndarray) -> np.ndarray:
        """(n, d) float32 codes of images X for the density terms: mu(x), or the conv feature maps."""
        if self.density_space == "latent":
            return _posterior_means(model, X)
        return _conv_codes(model, X)

    def _member_scores(self, model: ConvVAE, X: np.ndarray) -> np.ndarray:
        """(n,) the ``score_method`` score of one VAE, in nats, float64."""
        parts = [
            score_images(model, torch.from_numpy(X[s : s + CHUNK]), self.score_method, self.n_draws)
            .double()
            .cpu()
            .numpy()
            for s in range(0, len(X), CHUNK)
        ]
        return np.concatenate(parts) if parts else np.zeros(0)

    def score_terms(self, X: np.ndarray, own: np.ndarray | None = None) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        """Per VAE, the standardised reconstruction term (n,) and the standardised distance of each density
        term (n,) (see :meth:`density_weights`); needs ``latent_k``. Images marked in ``own`` (n,) are
        references themselves and are measured leaving themselves out."""
        if not getattr(self, "latent_k", 0):
            raise ModelError("score_terms needs a detector fitted with latent_k >= 1")
        X = self._check_shape(X)
        out = []
        for i, m in enumerate(self.models_):
            out.append(
                self._standardised(i, self._member_scores(m, X), self._distances(i, self._density_codes(m, X), own))
            )
        return out

    # ------------------------------------------------------------- scoring
    @property
    def image_mode(self) -> str:
        """ "L" (grey) or "RGB": what images are converted to before scoring."""
        return "RGB" if self.config_.channels == 3 else "L"

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) images are resized to before scoring."""
        return self.config_.height, self.config_.width

    def _check_shape(self, X: np.ndarray) -> np.ndarray:
        X = _as_images(X)
        want = (self.config_.channels, self.config_.height, self.config_.width)
        if X.shape[1:] != want:
            raise InputError(
                f"images of shape {X.shape[1:]} (C, H, W), the model expects {want}: read them with "
                f"pipeline.data.images.read_images(..., mode={self.image_mode!r}, size={self.image_size})"
            )
        return X

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """(n,) anomaly scores of images X (n, C, H, W) in [0, 1], higher = more anomalous; deterministic."""
        if not hasattr(self, "models_"):
            raise ModelError("this ImageVAEDetector is not fitted yet: call fit() or load()")
        return self._score(self._check_shape(X))

    def _score(self, X: np.ndarray, own: np.ndarray | None = None) -> np.ndarray:
        """Scores of checked images X; those marked in ``own`` are density references themselves (the
        calibration images at fit time) and are measured leaving themselves out."""
        if not len(X):
            return np.zeros(0)
        if not self.latent_k:
            return np.mean([self._member_scores(m, X) for m in self.models_], axis=0)
        weights = self.density_weights()
        return np.mean(
            [rec + sum(w * t for w, t in zip(weights, terms, strict=True)) for rec, terms in self.score_terms(X, own)],
            axis=0,
        )

    # ------------------------------------------------- what the tutorials show
    def reconstruct(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reconstructions (n, C, H, W) in [0, 1] and per-pixel error maps (n, H, W) in nats (first model)."""
        X = self._check_shape(X)
        parts = [reconstruct(self.models_[0], torch.from_numpy(X[s : s + CHUNK])) for s in range(0, len(X), CHUNK)]
        if not parts:
            return np.zeros((0, *X.shape[1:]), np.float32), np.zeros((0, *X.shape[2:]), np.float32)
        return (
            np.concatenate([p[0].float().cpu().numpy() for p in parts]),
            np.concatenate([p[1].float().cpu().numpy() for p in parts]),
        )

    @torch.no_grad()
    def encode(self, X: np.ndarray) -> np.ndarray:
        """(n, latent_dim) posterior means mu(x) of the first model."""
        X = self._check_shape(X)
        m = self.models_[0].eval()
        if not len(X):
            return np.zeros((0, self.config_.latent_dim), np.float32)
        return np.concatenate(
            [m.encode(torch.from_numpy(X[s : s + CHUNK]))[0].float().numpy() for s in range(0, len(X), CHUNK)]
        )

    @torch.no_grad()
    def decode(self, Z: np.ndarray) -> np.ndarray:
        """Images (n, C, H, W) in [0, 1] decoded from latent codes Z (n, latent_dim) by the first model."""
        m = self.models_[0].eval()
        z = torch.as_tensor(np.asarray(Z, dtype=np.float32))
        return m.mean_image(m.decode(z)).numpy()

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """(n, C, H, W) images decoded from z ~ N(0, I) drawn with ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        return self.decode(torch.randn((n, self.config_.latent_dim), generator=gen).numpy())

    # ---------------------------------------------------------- save / load
    def params(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "latent_dim": self.latent_dim,
            "conv_channels": list(self.conv_channels),
            "hidden": self.hidden,
            "likelihood": self.likelihood,
            "score_method": self.score_method,
            "n_draws": self.n_draws,
            "n_models": self.n_models,
            "latent_k": self.latent_k,
            "latent_weight": self.latent_weight,
            "cosine_weight": self.cosine_weight,
            "density_space": self.density_space,
            "val_fraction": self.val_fraction,
            "cal_fraction": self.cal_fraction,
            "seed": self.seed,
        }

    def _meta(self) -> dict[str, Any]:
        return {"model_config": self.config_.to_dict()}

    @classmethod
    def _from_meta(cls, meta: dict[str, Any]) -> ImageVAEDetector:
        p = dict(meta["params"], conv_channels=tuple(meta["params"]["conv_channels"]))
        tc = ImageTrainConfig.from_dict(meta["train_config"]) if meta["train_config"] else None
        det = cls(**p, train_config=tc)
        det.config_ = ConvVAEConfig.from_dict(meta["model_config"])
        return det

    def _new_model(self) -> ConvVAE:
        return ConvVAE(self.config_)


@torch.no_grad()
def _posterior_means(model: ConvVAE, X: np.ndarray) -> np.ndarray:
    """(n, latent_dim) float32 posterior means mu(x) of images X under one VAE, in chunks."""
    model.eval()
    device = next(model.parameters()).device
    if not len(X):
        return np.zeros((0, model.config.latent_dim), np.float32)
    return np.concatenate(
        [
            model.encode(torch.from_numpy(X[s : s + CHUNK]).to(device))[0].float().cpu().numpy()
            for s in range(0, len(X), CHUNK)
        ]
    )


@torch.no_grad()
def _conv_codes(model: ConvVAE, X: np.ndarray) -> np.ndarray:
    """(n, d) float32 conv feature maps of images X under one VAE (:meth:`ConvVAE.conv_features`), in chunks."""
    model.eval()
    device = next(model.parameters()).device
    parts = []
    for s in range(0, len(X), CHUNK):
        parts.append(model.conv_features(torch.from_numpy(X[s : s + CHUNK]).to(device)).float().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, model.config.feature_dim), np.float32)


def is_image_model_dir(path: str | Path) -> bool:
    """Whether a saved model folder holds an image detector."""
    return (Path(path) / META_FILE).is_file()


def _as_images(X: np.ndarray) -> np.ndarray:
    """X as contiguous float32 (n, C, H, W), checked."""
    X = np.asarray(X)
    if X.dtype == object or X.ndim != 4:
        raise InputError(
            f"images must be one array of shape (n, C, H, W), got {X.dtype} array of shape {X.shape}: "
            "read images of mixed sizes with a size to resize them to"
        )
    if X.dtype == np.uint8:
        X = X.astype(np.float32) / 255.0
    return np.ascontiguousarray(X, dtype=np.float32)
