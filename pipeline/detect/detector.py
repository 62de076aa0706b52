"""The estimator users and flows call: fit / score_samples / predict, save / load.

It ties schema, preprocessing, the VAE and the calibrated threshold together, so that the
threshold and the scaling statistics travel inside the saved model and serving cannot drift
from training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.data.preprocess import Preprocessor
from pipeline.data.schema import Schema
from pipeline.detect.detector_fit import DEFAULT_KL_WEIGHTS, TableFitting
from vae.config import ModelConfig, TrainConfig
from vae.model import TabularVAE

META_FILE = "detector.json"


class VAEAnomalyDetector(TableFitting):
    """VAE anomaly detector for tables; higher score = more anomalous.

    Args:
        alpha: target false-positive rate of the calibrated threshold.
        id_columns: columns carried into reports, never modelled.
        label_column: optional 0/1 column (1 = anomaly) used only for evaluation: its
            anomalous rows are kept out of training and calibration.
        categorical_columns: columns to model as categorical whatever their dtype.
        val_fraction, cal_fraction: shares of the (normal) rows held out for early stopping
            (each VAE its own block of that size: ``n_models``) and for calibration.
        hidden, latent_dim: network size; None sizes it from the data (ModelConfig.for_data).
        train_config: trainer settings (epochs, batch size, seed, device...).
        score_method: ``elbo`` (negative ELBO), ``iwae`` or ``recon``.
        n_draws: fixed Monte Carlo draws per row for the -ELBO (or IWAE) score (why 4:
            docs/decisions/002-detector-base-faiss-and-cheaper-passes.md).
        n_models: size of the ensemble: VAEs trained from seeds ``seed, seed+1, ...``, cross-fitted
            (:func:`pipeline.data.split.member_folds`): each early-stops on its own block of
            ``val_fraction`` of the rows, trains on the other non-calibration rows and has its score
            terms standardised on its block; the score is the mean of their scores. 5 by default: with the
            default fractions, one member per block of the non-calibration rows.
        cross_fit: False trains every VAE on the same rows and early-stops and standardises them all on
            the same validation rows.
        calibration: how the threshold is calibrated (:mod:`pipeline.calibrate.conformal`). ``split``: ``cal_fraction``
            of the normal rows are set aside and never fitted on (split-conformal, exact). ``cross``: the normal
            rows are cut into ``n_models`` folds (``n_models`` >= 3); VAE k never sees fold k (it early-stops on
            fold k + 1 and trains on the rest), and a new row is compared with each VAE's scores of the fold it
            never saw (cross-conformal: no rows are set aside, so tables from 30 normal rows are served).
            ``auto`` (default): ``split`` when it leaves at least ``SPLIT_MIN_EXCEEDANCES / alpha`` calibration
            rows, else ``cross``. The rule used is ``calibration_rule_``.
        segment_column: a column of the table whose values (segments: country, channel, machine) each get their
            own threshold (:mod:`pipeline.calibrate.segments`: Mondrian split-conformal, the false-positive rate
            holds within each segment); a segment with too few calibration rows for alpha, or unseen in training,
            uses the pooled threshold. The column is still modelled as a feature unless it is an id column. Needs
            split-conformal calibration (``auto`` then uses it at any size it allows).
        latent_k: with k >= 1, each VAE's score adds the density terms of :mod:`pipeline.detect.density`:
            the distance from the row's code to the k-th nearest code of the training, validation and
            calibration rows, each term standardised on the validation rows; 0 = the plain score. 1 by default.
        latent_weight: weight of the distance between the codes as they are (0 by default: not searched).
        cosine_weight: (``hidden`` space) weight of the distance between the codes scaled to unit length
            (it compares the pattern of activations, not their size).
        centred_weight: (``hidden`` space) weight of the distance between the codes centred on the mean
            reference code, then scaled to unit length (how a row's pattern departs from the typical row's).
        conditional_groups: G >= 1 (with ``latent_k`` >= 1) makes the likelihood part of each VAE's score
            the mean of its standardised -ELBO and its standardised masked conditional NLL over G feature
            groups (:func:`vae.score.conditional_nll`: each group's cells scored with the group hidden from
            the encoder); 0 = the -ELBO alone.
        density_space: what the codes are: ``hidden`` (default), the encoder's last hidden layer, or
            ``latent``, the posterior mean mu(x). The defaults (``hidden``, k = 1, weights 0 / 1 / 1, G = 8)
            were chosen on ``benchmarks.tabular``: docs/decisions/ and BENCHMARKS.md give the evidence.
        kl_weights: the KL weights (beta) to train the ensemble with, tried in order: the ensemble is
            trained at the first weight at which every VAE keeps all its latent dimensions active (the
            variance of mu(x) over its training rows above ``ACTIVE_UNIT_VARIANCE``; Burda et al. 2016);
            the last weight is kept whatever happens. At each weight the ensemble trains in one batched fit
            (:func:`vae.trainer.fit_members`), given up at ``COLLAPSE_CHECK_EPOCHS`` after the KL warm-up
            when a VAE has already collapsed a dimension. Default ``(1.0, 0.2)``: the true ELBO unless it
            collapses a latent dimension, then beta = 0.2 (Higgins et al. 2017). It overrides
            ``train_config.beta``; None trains at ``train_config.beta`` alone. The weight used is
            ``kl_weight_``.
        min_log_var: floor of the numeric features' learned log-variance (standardised units).
        likelihood: numeric likelihood of the decoder: ``gaussian``, ``student_t`` or ``laplace``.
        scaling: numeric preprocessing, ``standard`` or ``quantile`` (see :class:`Preprocessor`).
        seed: seeds the split and the trainer.
    """

    kind = "table"
    meta_file = META_FILE
    density_spaces = ("hidden", "latent")
    unit = "rows"

    def __init__(
        self,
        *,
        alpha: float = 0.01,
        id_columns: Sequence[str] = (),
        label_column: str | None = None,
        categorical_columns: Sequence[str] = (),
        val_fraction: float = 0.15,
        cal_fraction: float = 0.2,
        hidden: tuple[int, ...] | None = None,
        latent_dim: int | None = None,
        train_config: TrainConfig | None = None,
        score_method: str = "elbo",
        n_draws: int = 4,
        n_models: int = 5,
        cross_fit: bool = True,
        calibration: str = "auto",
        segment_column: str | None = None,
        latent_k: int = 1,
        latent_weight: float = 0.0,
        cosine_weight: float = 1.0,
        centred_weight: float = 1.0,
        conditional_groups: int = 8,
        density_space: str = "hidden",
        kl_weights: Sequence[float] | None = DEFAULT_KL_WEIGHTS,
        min_log_var: float = -6.0,
        scaling: str = "standard",
        likelihood: str = "gaussian",
        seed: int = 0,
    ) -> None:
        self.alpha = alpha
        self.id_columns = tuple(id_columns)
        self.label_column = label_column
        self.categorical_columns = tuple(categorical_columns)
        self.val_fraction = val_fraction
        self.cal_fraction = cal_fraction
        self.hidden = hidden
        self.latent_dim = latent_dim
        self.train_config = train_config
        self.score_method = score_method
        self.n_draws = n_draws
        self.n_models = n_models
        self.cross_fit = cross_fit
        self.calibration = calibration
        self.segment_column = segment_column
        self.latent_k = latent_k
        self.latent_weight = latent_weight
        self.cosine_weight = cosine_weight
        self.centred_weight = centred_weight
        self.conditional_groups = conditional_groups
        self.density_space = density_space
        self.kl_weights = None if kl_weights is None else tuple(kl_weights)
        self.min_log_var = min_log_var
        self.scaling = scaling
        self.likelihood = likelihood
        self.seed = seed

    # ---------------------------------------------------------- save / load
    def params(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "id_columns": list(self.id_columns),
            "label_column": self.label_column,
            "categorical_columns": list(self.categorical_columns),
            "val_fraction": self.val_fraction,
            "cal_fraction": self.cal_fraction,
            "hidden": self.hidden,
            "latent_dim": self.latent_dim,
            "score_method": self.score_method,
            "n_draws": self.n_draws,
            "n_models": self.n_models,
            "cross_fit": self.cross_fit,
            "calibration": self.calibration,
            "segment_column": self.segment_column,
            "latent_k": self.latent_k,
            "latent_weight": self.latent_weight,
            "cosine_weight": self.cosine_weight,
            "centred_weight": self.centred_weight,
            "conditional_groups": self.conditional_groups,
            "density_space": self.density_space,
            "kl_weights": None if self.kl_weights is None else list(self.kl_weights),
            "min_log_var": self.min_log_var,
            "scaling": self.scaling,
            "likelihood": self.likelihood,
            "seed": self.seed,
        }

    def _meta(self) -> dict[str, Any]:
        return {
            "schema": self.schema_.to_dict(),
            "preprocessor": self.preprocessor_.to_dict(),
            "model_config": self.model_config_.to_dict(),
            "feature_nll_baseline": [float(v) for v in self.feature_nll_baseline_],
            "kl_weight": self.kl_weight_,
            "active_units": self.active_units_,
        }

    @classmethod
    def _from_meta(cls, meta: dict[str, Any]) -> VAEAnomalyDetector:
        p = dict(meta["params"])
        det = cls(
            **{k: v for k, v in p.items() if k != "hidden"},
            hidden=tuple(p["hidden"]) if p["hidden"] else None,
            train_config=TrainConfig.from_dict(meta["train_config"]) if meta["train_config"] else None,
        )
        det.schema_ = Schema.from_dict(meta["schema"])
        det.preprocessor_ = Preprocessor.from_dict(det.schema_, meta["preprocessor"])
        det.model_config_ = ModelConfig.from_dict(meta["model_config"])
        det.feature_nll_baseline_ = np.asarray(meta["feature_nll_baseline"], dtype=np.float64)
        det.kl_weight_ = float(meta["kl_weight"])
        det.active_units_ = meta["active_units"]
        return det

    def _new_model(self) -> TabularVAE:
        return TabularVAE(self.model_config_)
