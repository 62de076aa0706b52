"""Fitting the table detector: the split, the ensemble at a KL weight that keeps its latent dimensions, calibration."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Self

import numpy as np
import pandas as pd
import torch

from pipeline.calibrate.metrics import labels_from
from pipeline.calibrate.segments import Segments, segment_values
from pipeline.data.preprocess import Preprocessor
from pipeline.data.schema import infer_schema
from pipeline.data.split import Split, cross_folds, member_folds, split_rows
from pipeline.detect.density import MAX_REFERENCE_ROWS
from pipeline.detect.detector_scoring import TableScoring, member_nll
from pipeline.errors import InputError
from vae.config import ModelConfig, TrainConfig
from vae.elbo import TABULAR
from vae.fit_plan import TrainHistory
from vae.model import TabularBatch, TabularVAE
from vae.score import SCORE_METHODS, conditional_nll, latent_variances, score_pass
from vae.trainer import fit_members

log = logging.getLogger("pipeline.detect.detector")  # the table detector's logger, whichever module logs

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


class TableFitting(TableScoring):
    """The table detector's fit: schema, split, preprocessing, the ensemble, density references, calibration."""

    def fit(self, df: pd.DataFrame) -> Self:
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
            out.append((self._member_scores(passes, searches, only=i)[0], member_nll(passes)))
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
