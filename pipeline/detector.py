"""The estimator users and flows call: fit / score_samples / predict, save / load.

It ties schema, preprocessing, the VAE and the calibrated threshold together, so that the
threshold and the scaling statistics travel inside the saved model and serving cannot drift
from training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.density import MAX_REFERENCE_ROWS, search_pool
from pipeline.ensemble import EnsembleDetector
from pipeline.errors import InputError
from pipeline.metrics import labels_from
from pipeline.preprocess import Preprocessor
from pipeline.schema import Schema, infer_schema
from pipeline.segments import Segments, segment_values
from pipeline.split import Split, cross_folds, member_folds, split_rows
from vae.config import ModelConfig, TrainConfig
from vae.elbo import TABULAR
from vae.fit_plan import TrainHistory
from vae.model import MISSING, TabularBatch, TabularVAE
from vae.score import (
    SCORE_METHODS,
    MemberPass,
    conditional_nll,
    decoded_means,
    encoder_features,
    latent_variances,
    posterior_means,
    score_pass,
)
from vae.trainer import fit_members

log = logging.getLogger(__name__)

META_FILE = "detector.json"
SCORE_CHUNK = 32768
# Training codes kept per VAE in the hidden space (a seeded sample beyond this): at most 20 MB of
# float32 per VAE, and it bounds the cost of the brute-force search in 16-256 dimensions.
MAX_HIDDEN_REFERENCE_ROWS = 20_000
# A latent dimension is active when its posterior mean varies over the training rows by more than this
# (Burda, Grosse & Salakhutdinov 2016). Measured on the dev data (BENCHMARKS.md, Tenth round), the
# variances of beta = 1 VAEs fall in two groups, about 0.7-1 (active) and 0.0-0.02 (collapsed): the
# choice of KL weight it leads to is the same at 0.03, and at 0.1 it changes on one fit of 30.
ACTIVE_UNIT_VARIANCE = 0.01
DEFAULT_KL_WEIGHTS = (1.0, 0.2)
# Epochs after the KL warm-up at which a fit at a weight that is not the last is checked for a collapsed latent
# dimension (and given up if one has collapsed), instead of only at its end.
COLLAPSE_CHECK_EPOCHS = 10


@dataclass(frozen=True)
class Explanation:
    """Per-feature attribution of rows, features in schema order (numeric, then categorical).

    Attributes:
        nll: (n, n_features) -log p(x_j | z = mu(x)), mean over the ensemble.
        excess: (n, n_features) nll above the median of normal calibration rows, floored at 0;
            a feature's share of a row's anomaly is its excess over the row's total excess.
        expected_numeric: (n, n_numeric) the decoded mean of each numeric feature, in data units,
            with the row's top feature (largest excess) masked out of the encoder input, so that
            for that feature it is the model's expectation given the other features.
        likely_codes: per categorical feature, (n,) the code of the most likely category (same masking).
    """

    nll: np.ndarray
    excess: np.ndarray
    expected_numeric: np.ndarray
    likely_codes: list[np.ndarray]


class VAEAnomalyDetector(EnsembleDetector):
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
            (:func:`pipeline.split.member_folds`): each early-stops on its own block of
            ``val_fraction`` of the rows, trains on the other non-calibration rows and has its score
            terms standardised on its block; the score is the mean of their scores. 5 by default (with the
            default fractions, one member per block of the non-calibration rows): cross-fitting raised
            the mean AUROC of ``benchmarks.tabular`` over 3 VAEs sharing one validation block, and with
            cross-fitting 5 VAEs scored above 3 (BENCHMARKS.md, Sixth round).
        cross_fit: False trains every VAE on the same rows and early-stops and standardises them all on
            the same validation rows.
        calibration: how the threshold is calibrated (:mod:`pipeline.calibrate`). ``split``: ``cal_fraction``
            of the normal rows are set aside and never fitted on (split-conformal, exact). ``cross``: the normal
            rows are cut into ``n_models`` folds (``n_models`` >= 3); VAE k never sees fold k (it early-stops on
            fold k + 1 and trains on the rest), and a new row is compared with each VAE's scores of the fold it
            never saw (cross-conformal: no rows are set aside, so tables from 30 normal rows are served).
            ``auto`` (default): ``split`` when it leaves at least ``SPLIT_MIN_EXCEEDANCES / alpha`` calibration
            rows, else ``cross``. The rule used is ``calibration_rule_``.
        segment_column: a column of the table whose values (segments: country, channel, machine) each get their
            own threshold (:mod:`pipeline.segments`: Mondrian split-conformal, the false-positive rate holds within
            each segment); a segment with too few calibration rows for alpha, or unseen in training, uses the
            pooled threshold. The column is still modelled as a feature unless it is an id column. Needs
            split-conformal calibration (``auto`` then uses it at any size it allows).
        latent_k: with k >= 1, each VAE's score adds the density terms of :mod:`pipeline.density`:
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

    # ----------------------------------------------------------------- fit
    def fit(self, df: pd.DataFrame) -> VAEAnomalyDetector:
        """Infer the schema, split, fit preprocessing and the VAE, calibrate the threshold.

        Raises:
            InputError: bad parameters or data (names the problem).
        """
        self._check_params()
        if not self.centred_weight >= 0 or not (
            isinstance(self.conditional_groups, int) and self.conditional_groups >= 0
        ):
            raise InputError(
                f"centred_weight must be >= 0 and conditional_groups an integer >= 0, got "
                f"{self.centred_weight!r} and {self.conditional_groups!r}"
            )
        if self.kl_weights is not None and (
            not self.kl_weights or not all(isinstance(b, int | float) and 0 <= b < np.inf for b in self.kl_weights)
        ):
            raise InputError(
                f"kl_weights must be None or a non-empty sequence of finite weights >= 0, got {self.kl_weights!r}"
            )
        if self.scaling not in ("standard", "quantile"):
            raise InputError(f"scaling must be 'standard' or 'quantile', got {self.scaling!r}")
        if self.score_method not in SCORE_METHODS:
            raise InputError(f"score_method must be one of {SCORE_METHODS}, got {self.score_method!r}")
        self.segments_ = None
        if self.segment_column is not None and (
            self.segment_column not in df.columns or self.segment_column == self.label_column
        ):
            raise InputError(
                f"segment column {self.segment_column!r} is not a column of the training data"
                if self.segment_column not in df.columns
                else f"segment column {self.segment_column!r} is the label column: choose another column"
            )
        self.schema_ = infer_schema(df, self.id_columns, self.label_column, self.categorical_columns)
        features = self.schema_.validate(df, source="training data")
        normal = np.ones(len(df), dtype=bool)
        if self.label_column:
            normal = labels_from(df[self.label_column].to_numpy(), self.label_column) == 0
        positions = np.flatnonzero(normal)
        rule = self.calibration_rule(len(positions))
        if rule == "cross":
            # Every normal row is held out by exactly one VAE (cross_folds): its out-of-fold score calibrates.
            thirds = cross_folds(len(positions), self.n_models, self.seed)
            folds = [(t, v) for t, v, _ in thirds]
            held = [torch.from_numpy(h) for _, _, h in thirds]
            fit_rows = np.arange(len(positions))
            split = Split(train=fit_rows, val=np.zeros(0, dtype=np.int64), cal=np.zeros(0, dtype=np.int64))
        else:
            split = split_rows(len(positions), self.val_fraction, self.cal_fraction, self.seed)
            # Cross-fitting: each VAE early-stops on its own block of rows and trains on the other
            # non-calibration rows (member_folds); the preprocessor is fitted on all of those rows.
            # Without it every VAE trains on split.train and early-stops on split.val.
            folds = (
                member_folds(split, self.n_models, self.seed)
                if self.cross_fit
                else [(split.train, split.val)] * self.n_models
            )
            fit_rows = np.sort(np.concatenate([split.train, split.val]))
        fit_f = features.iloc[positions[fit_rows]]
        self.preprocessor_ = Preprocessor(self.schema_, scaling=self.scaling).fit(
            fit_f if self.cross_fit else features.iloc[positions[split.train]]
        )
        self.model_config_ = replace(
            ModelConfig.for_data(
                len(self.schema_.numeric), self.preprocessor_.cardinalities, self.hidden, self.latent_dim
            ),
            min_log_var=self.min_log_var,
            likelihood=self.likelihood,
        )
        tc = self.train_config or TrainConfig(seed=self.seed)
        fit_b = self.preprocessor_.transform(fit_f)
        # each member's train / validation rows as positions in fit_b
        member_rows = [
            (torch.from_numpy(np.searchsorted(fit_rows, t)), torch.from_numpy(np.searchsorted(fit_rows, v)))
            for t, v in folds
        ]
        self.models_, histories = self._fit_members(fit_b, member_rows, tc)
        self.history_: TrainHistory = histories[0]
        self.histories_ = histories
        cal_b = self.preprocessor_.transform(features.iloc[positions[split.cal]])
        cal_own, held_out = self._fit_latent_density(
            fit_b, [v for _, v in member_rows], cal_b, held if rule == "cross" else None
        )
        if rule == "cross":
            self._calibrate_cross([scores for scores, _ in held_out])
            cal_nll = np.concatenate([nll for _, nll in held_out])
        else:
            cal_scores, cal_nll = self._calibration_pass(cal_b, cal_own)
            self._calibrate(cal_scores)
            if self.segment_column is not None:
                labels = segment_values(df[self.segment_column].iloc[positions[split.cal]])
                self.segments_ = Segments.fit(self.segment_column, labels, cal_scores, self.alpha)
        # A typical normal row's per-feature NLL: attribution reports each feature's excess over it.
        self.feature_nll_baseline_ = np.median(cal_nll, axis=0)
        self.n_rows_ = {
            "train": len(split.train),
            "val": len(split.val),
            "cal": len(split.cal),
            "excluded_anomalies": int((~normal).sum()),
        }
        return self

    def _fit_members(
        self, fit_b: TabularBatch, member_rows: list[tuple[torch.Tensor, torch.Tensor]], tc: TrainConfig
    ) -> tuple[list[TabularVAE], list[TrainHistory]]:
        """Fit the ensemble at the first of ``kl_weights`` that collapses no VAE's latent dimension.

        At each weight the VAEs train together in one batched fit (:func:`vae.trainer.fit_members`), VAE i
        from seed ``tc.seed + i`` on its own rows; the next weight is tried only when a VAE collapsed. Sets
        ``kl_weight_`` (the weight kept) and ``active_units_`` (each VAE's count of active latent dimensions
        on its training rows).
        """
        weights = (tc.beta,) if self.kl_weights is None else self.kl_weights
        train_rows, val_rows = [t for t, _ in member_rows], [v for _, v in member_rows]
        plan = tc.plan(min(len(t) for t in train_rows))
        seeds = [tc.seed + i for i in range(len(member_rows))]
        latent = self.model_config_.latent_dim

        def active_units(models: Sequence[TabularVAE]) -> list[int]:
            return [
                int((latent_variances(m, fit_b.rows(t)) > ACTIVE_UNIT_VARIANCE).sum())
                for m, t in zip(models, train_rows, strict=True)
            ]

        check_epoch = plan.kl_warmup_epochs + COLLAPSE_CHECK_EPOCHS
        for w, beta in enumerate(weights):
            last = w == len(weights) - 1
            models = [TabularVAE(self.model_config_) for _ in member_rows]
            # A weight that is not the last is given up as soon as a VAE has collapsed a dimension.
            check = (
                None
                if last or check_epoch >= plan.max_epochs
                else (check_epoch, lambda ms: min(active_units(ms)) < latent)
            )
            histories = fit_members(
                models, TABULAR, fit_b, train_rows, val_rows, replace(plan, beta=beta), seeds, check
            )
            active = active_units(models)
            if last or (min(active) == latent and not histories[0].stopped_by_check):
                break
            log.info(
                "KL weight %g: a VAE keeps %d of %d latent dimensions active after %d epochs%s; trying %g",
                beta,
                min(active),
                latent,
                max(len(h.val_loss) for h in histories),
                " (given up at the collapse check)" if histories[0].stopped_by_check else "",
                weights[w + 1],
            )
        self.kl_weight_, self.active_units_ = float(beta), active
        return models, histories

    def _fit_latent_density(
        self,
        fit_b: TabularBatch,
        member_val: list[torch.Tensor],
        cal_b: TabularBatch,
        member_held: list[torch.Tensor] | None = None,
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """Reference codes of each VAE and the medians / spreads of every score term on its validation rows.

        The references are all the normal rows of the training data: the rows the VAEs were fitted on
        (``fit_b``) and the calibration rows (a seeded sample beyond the cap), as a k-NN detector keeps
        all of its data. VAE i's terms are standardised on its own validation rows (the positions
        ``member_val[i]`` in ``fit_b``, rows it was not trained on). A validation or calibration row
        that is a reference is measured leaving itself out (its distance to the (k+1)-th nearest
        reference, itself being the first), so its distance is what a new row's would be against the
        other references, and both sets stay usable: the validation rows to standardise the terms, the
        calibration rows to set the threshold.

        Returns:
            (n_cal,) bool: which calibration rows are references (for :meth:`_calibration_pass`); and with
            ``member_held`` (positions in ``fit_b`` of each VAE's held-out rows), per VAE, its score of each of
            its held-out rows and their per-feature NLL (the out-of-fold scores of cross-conformal calibration),
            else [].
        """
        self.latent_codes_: list[np.ndarray] = []
        self.score_scale_: np.ndarray | None = None
        self._knn = self._centre = None
        own = np.zeros(len(fit_b) + len(cal_b), dtype=bool)
        if self.latent_k:
            own = self._fit_scale(fit_b, member_val, cal_b)
        out = []
        for i, h in enumerate(member_held or []):
            passes, searches = self._passes(fit_b.rows(h), explain=True, own=own[: len(fit_b)][h.numpy()], only=i)
            out.append((self._member_scores(passes, searches, only=i)[0], _member_nll(passes)))
        return own[len(fit_b) :], out

    def _fit_scale(self, fit_b: TabularBatch, member_val: list[torch.Tensor], cal_b: TabularBatch) -> np.ndarray:
        """Set the reference codes and ``score_scale_`` (see :meth:`_fit_latent_density`); returns which rows of
        ``fit_b`` then ``cal_b`` are references."""
        cap = MAX_HIDDEN_REFERENCE_ROWS if self.density_space == "hidden" else MAX_REFERENCE_ROWS
        n_fit = len(fit_b)
        pool = TabularBatch(*(torch.cat(parts) for parts in zip(fit_b, cal_b, strict=True)))
        own = self._fit_references(
            len(pool), cap, lambda m, pick: self._density_codes(m, pool.rows(torch.from_numpy(pick)))
        )
        scale = []
        for i, (m, v) in enumerate(zip(self.models_, member_val, strict=True)):
            val_b = fit_b.rows(v)
            p = score_pass(m, val_b, self.score_method, self.n_draws)
            cond = conditional_nll(m, val_b, self.conditional_groups).cpu().numpy() if self.conditional_groups else None
            dists = self._distances(i, self._pass_codes(p), own[:n_fit][v.numpy()])
            scale.append(self._scale_row(p.score.double().cpu().numpy(), dists, cond))
        self.score_scale_ = np.asarray(scale, dtype=np.float64)
        return own

    def segment_codes(self, frame: pd.DataFrame) -> np.ndarray | None:
        """(n,) each row's segment code (:meth:`pipeline.segments.Segments.codes`), or None without segments.

        Raises:
            InputError: ``frame`` lacks the segment column.
        """
        if self.segments_ is None:
            return None
        if self.segments_.column not in frame.columns:
            raise InputError(
                f"missing segment column {self.segments_.column!r}: this model has a threshold per segment"
            )
        return self.segments_.codes(segment_values(frame[self.segments_.column]))

    def thresholds(self, data: pd.DataFrame) -> np.ndarray | float:
        """Each row's threshold at ``alpha``: its segment's, or ``threshold_`` (pooled) for a small or unseen
        segment and for a model without segments."""
        codes = self.segment_codes(data)
        if codes is None or self.segments_ is None:
            return self.threshold_
        out = np.full(len(data), self.threshold_, dtype=np.float64)
        for j, t in enumerate(self.segments_.thresholds(self.alpha)):
            if t is not None:
                out[codes == j] = t
        return out

    def _density_codes(self, model: TabularVAE, batch: TabularBatch) -> np.ndarray:
        """(n, d) float64 codes of the rows for the density terms: mu(x) or the encoder's last hidden layer."""
        if self.density_space == "latent":
            return posterior_means(model, batch)
        return encoder_features(model, batch)

    def _pass_codes(self, p: MemberPass) -> np.ndarray:
        return (p.mu if self.density_space == "latent" else p.features).double().cpu().numpy()

    # ------------------------------------------------------------- scoring
    def _batches(self, features: pd.DataFrame):
        for start in range(0, len(features), SCORE_CHUNK):
            yield self.preprocessor_.transform(features.iloc[start : start + SCORE_CHUNK])

    def score_validated(self, features: pd.DataFrame) -> np.ndarray:
        out = [self._combine(*self._passes(b, explain=False)) for b in self._batches(features)]
        return np.concatenate(out) if out else np.zeros(0)

    def _calibration_pass(self, batch: TabularBatch, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores (n,) and per-feature NLL (n, n_features) of the calibration rows in one pass per chunk.

        The rows marked in ``own`` (n,) are density references themselves: their distances leave
        themselves out, so their scores are what new rows' would be.
        """
        scores, nll = [], []
        for start in range(0, len(batch), SCORE_CHUNK):
            part = slice(start, start + SCORE_CHUNK)
            passes, searches = self._passes(batch.rows(part), explain=True, own=own[part])
            nll.append(_member_nll(passes))
            scores.append(self._combine(passes, searches))
        return np.concatenate(scores), np.concatenate(nll)

    def explain_validated(self, features: pd.DataFrame) -> Explanation:
        """Per-feature attribution of validated rows (see :class:`Explanation`)."""
        self._check_fitted()
        return self._explain(features)

    def score_and_explain(self, features: pd.DataFrame) -> tuple[np.ndarray, Explanation]:
        """Scores and attribution of validated rows in one pass: each VAE encodes each chunk once for
        the score, the latent term and the attribution, and once more with the top feature masked."""
        self._check_fitted()
        scores, parts = [], []
        for b in self._batches(features):
            passes, searches = self._passes(b, explain=True)
            parts.append(self._explain_batch(b, passes))  # while the last VAE's k-NN search runs
            scores.append(self._combine(passes, searches))
        return (np.concatenate(scores) if scores else np.zeros(0)), self._join(parts)

    def _explain(self, features: pd.DataFrame) -> Explanation:
        return self._join(
            [self._explain_batch(b, self._passes(b, explain=True, search=False)[0]) for b in self._batches(features)]
        )

    def _join(self, parts: list[Explanation]) -> Explanation:
        if not parts:
            k = len(self.schema_.features)
            return Explanation(
                np.zeros((0, k)),
                np.zeros((0, k)),
                np.zeros((0, len(self.schema_.numeric))),
                [np.zeros(0, dtype=np.int64) for _ in self.schema_.categorical],
            )
        return Explanation(
            np.concatenate([p.nll for p in parts]),
            np.concatenate([p.excess for p in parts]),
            np.concatenate([p.expected_numeric for p in parts]),
            [np.concatenate([p.likely_codes[j] for p in parts]) for j in range(len(self.schema_.categorical))],
        )

    def _passes(
        self,
        batch: TabularBatch,
        explain: bool,
        search: bool = True,
        own: np.ndarray | None = None,
        only: int | None = None,
    ) -> tuple[list[MemberPass], list[Future[np.ndarray]]]:
        """One :func:`vae.score.score_pass` per VAE of the ensemble (or of VAE ``only``); with the latent term
        on, each VAE's k-NN distances are searched in a background thread while the next VAE runs (both release
        the GIL).

        Returns the passes and, with the density terms on, each VAE's search for its k-NN distances
        (else []): :meth:`_combine` waits for them, so the caller can do other work in between. Rows
        marked in ``own`` are references themselves and are measured leaving themselves out.
        """
        passes, searches = [], []
        if self.latent_k and search:
            self._latent_knns()  # built here, once, not by the search threads at the same time
        for i, m in enumerate(self.models_):
            if only is not None and i != only:
                continue
            p = score_pass(m, batch, self.score_method, self.n_draws, explain=explain)
            if self.latent_k and search:
                searches.append(search_pool().submit(self._distances, i, self._pass_codes(p), own))
                if self.conditional_groups:  # while the search runs
                    p = p._replace(cond=conditional_nll(m, batch, self.conditional_groups))
            passes.append(p)
        return passes, searches

    def _explain_batch(self, batch: TabularBatch, passes: list[MemberPass]) -> Explanation:
        nll = _member_nll(passes)
        baseline = getattr(self, "feature_nll_baseline_", None)
        excess = np.maximum(nll - (baseline if baseline is not None else 0.0), 0.0)
        # What the model expects for each row's top feature given the *other* features: that cell is
        # masked out (left out of the encoder input), then decoded at the posterior mean.
        top = excess.argmax(axis=1)
        n_num = self.model_config_.n_numeric
        rows = np.arange(len(top))
        mask, codes = batch.mask_num.clone(), batch.x_cat.clone()
        num_rows = top < n_num
        mask[rows[num_rows], top[num_rows]] = 0.0
        codes[rows[~num_rows], top[~num_rows] - n_num] = MISSING
        masked = TabularBatch(batch.x_num, mask, codes)
        members = [decoded_means(m, masked) for m in self.models_]
        expected = self.preprocessor_.inverse_numeric(np.mean([m[0] for m in members], axis=0))
        likely = list(members[0][1])  # the first member's most likely category
        return Explanation(nll, excess, expected, likely)

    def _combine(self, passes: list[MemberPass], searches: list[Future[np.ndarray]]) -> np.ndarray:
        """The detector's score (:meth:`_ensemble_score`) of every VAE's pass."""
        return self._ensemble_score(self._member_scores(passes, searches))

    def _member_scores(
        self, passes: list[MemberPass], searches: list[Future[np.ndarray]], only: int | None = None
    ) -> np.ndarray:
        """(len(passes), n) each VAE's score (of VAE ``only`` when the passes are its alone): its -ELBO (or IWAE
        / recon) score, plus its density terms when on (:meth:`EnsembleDetector._member_total`)."""
        member = [p.score.double().cpu().numpy() for p in passes]
        if self.latent_k:
            for j, search in enumerate(searches):
                i = j if only is None else only
                cond = passes[j].cond
                cond_np = cond.cpu().numpy() if self.conditional_groups and cond is not None else None
                member[j] = self._member_total(i, member[j], search.result(), cond_np)
        return np.asarray(member)

    def score_samples(self, df: pd.DataFrame, source: str = "input") -> np.ndarray:
        """(n,) raw anomaly scores, higher = more anomalous; deterministic.

        Raises:
            SchemaError: ``df`` does not match the training schema.
        """
        self._check_fitted()
        return self.score_validated(self.schema_.validate(df, source=source, require_ids=False))

    def batch(self, df: pd.DataFrame) -> TabularBatch:
        """The encoded tensors of ``df`` (for sampling, reconstructions and plots)."""
        self._check_fitted()
        return self.preprocessor_.transform(self.schema_.validate(df, require_ids=False))

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
            train_config=TrainConfig(**meta["train_config"]) if meta["train_config"] else None,
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


def _member_nll(passes: list[MemberPass]) -> np.ndarray:
    """(n, n_features) per-feature NLL at the posterior mean, the mean over the VAEs' passes (made with explain)."""
    return np.mean([p.nll.cpu().numpy() for p in passes if p.nll is not None], axis=0)
