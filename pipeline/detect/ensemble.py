"""What the table and image detectors share: parameter checks, the calibration-size rule, the density
references and the standardisation of the score terms, the conformal threshold, predict, save and load.

A subclass encodes its inputs (a table's preprocessed rows, an image's pixels) and trains its kind of VAE
through :func:`vae.trainer.fit_members`; it tells this base how to build a model (:meth:`_new_model`), which
metadata of its own to write (:meth:`_meta`) and how to read it back (:meth:`_from_meta`).

Each member's score is a sum of standardised terms (:meth:`EnsembleDetector._member_total`): its likelihood
term, optionally averaged with a conditional term, plus the weighted density terms of
:mod:`pipeline.detect.density`; every term is standardised by its median and spread on that member's validation
rows, in the order of one row of ``score_scale_``: ``[likelihood m, s, distance_1 m, s, ..., conditional m, s]``.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from pipeline.calibrate.conformal import (
    check_alpha,
    conformal_threshold,
    cross_calibration_scores,
    cross_conformal_scores,
    min_calibration_rows,
)
from pipeline.calibrate.segments import Segments
from pipeline.detect.density import DensityTerms, finite_references, reference_rows, robust_scale
from pipeline.detect.model_files import CAL_FILE, WEIGHTS_FILE, restore_members, write_model_files
from pipeline.errors import InputError, ModelError
from vae.fit_plan import TrainHistory

# Version 3: the calibration rule and, for cross-conformal models, each member's out-of-fold scores are written;
# models of versions 1 and 2 (never released) are refused.
FORMAT_VERSION = 3
CALIBRATIONS = ("auto", "split", "cross")
# Cross-conformal calibration trains from this many normal rows, and from 1 / alpha - 1 when that is more.
MIN_CROSS_ROWS = 30
# ``auto`` uses split-conformal calibration when the split leaves at least SPLIT_MIN_EXCEEDANCES / alpha
# calibration rows (the threshold is then the 5th-largest calibration score or deeper), cross-conformal below
# (why 5: docs/decisions/003-cross-conformal-calibration.md).
SPLIT_MIN_EXCEEDANCES = 5


class EnsembleDetector(DensityTerms):
    """Base of the table and image detectors (see the module docstring); higher score = more anomalous."""

    kind: ClassVar[str]
    """``table`` or ``image``: written into the saved model and checked on load."""
    meta_file: ClassVar[str]
    """The JSON file of a saved model (its name marks the kind of the folder)."""
    density_spaces: ClassVar[tuple[str, ...]]
    unit: ClassVar[str]
    """What the detector's inputs are called in messages: ``rows`` or ``images``."""

    alpha: float
    n_models: int
    cal_fraction: float
    calibration: str = "split"
    """``auto``, ``split`` or ``cross`` (the table detector's parameter; images calibrate split-conformal)."""
    cross_fit: bool = False
    calibration_rule_: str = "split"
    """The rule that made the threshold: ``split`` or ``cross`` (see :mod:`pipeline.calibrate.conformal`)."""
    fold_scores_: list[np.ndarray]
    """Cross-conformal models: each member's sorted out-of-fold scores of the rows it never saw (else [])."""
    segment_column: str | None = None
    """The table detector's per-segment threshold column (:mod:`pipeline.calibrate.segments`); images have none."""
    segments_: Segments | None = None
    seed: int
    train_config: Any
    models_: list[nn.Module]
    histories_: list[TrainHistory]
    history_: TrainHistory
    score_scale_: np.ndarray | None
    calibration_scores_: np.ndarray
    threshold_: float
    n_rows_: dict[str, int]

    # ----------------------------------------------------------------- fit
    def _check_params(self) -> None:
        """Refuse bad shared parameters, naming the value.

        Raises:
            InputError: alpha, n_models, the density parameters or density_space out of range.
        """
        check_alpha(self.alpha)
        if not isinstance(self.n_models, int) or self.n_models < 1:
            raise InputError(f"n_models must be an integer >= 1, got {self.n_models!r}")
        if self.latent_k < 0 or not self.latent_weight >= 0 or not self.cosine_weight >= 0:
            raise InputError(
                f"latent_k, latent_weight and cosine_weight must be >= 0, got {self.latent_k!r}, "
                f"{self.latent_weight!r} and {self.cosine_weight!r}"
            )
        if self.density_space not in self.density_spaces:
            raise InputError(f"density_space must be one of {self.density_spaces}, got {self.density_space!r}")

    def _min_cross_rows(self) -> int:
        return max(MIN_CROSS_ROWS, min_calibration_rows(self.alpha))

    def calibration_rule(self, n_normal: int) -> str:
        """The rule this fit calibrates with, for ``n_normal`` normal training inputs, checked for size.

        ``split`` sets ``cal_fraction`` of the inputs aside; ``cross`` needs a cross-fitted ensemble of at least
        three members (a held-out and a validation fold each) and uses every input; ``auto`` takes ``split`` when it
        leaves at least ``SPLIT_MIN_EXCEEDANCES / alpha`` calibration inputs (or when the ensemble cannot be
        cross-conformal), else ``cross``.

        Raises:
            InputError: an unknown rule, ``cross`` without a cross-fitted ensemble, or too few inputs; the message
                says how many inputs are needed.
        """
        if self.calibration not in CALIBRATIONS:
            raise InputError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.segment_column is not None and self.calibration == "cross":
            raise InputError(
                f"per-segment thresholds (segment column {self.segment_column!r}) are split-conformal: "
                "use calibration='split' or 'auto'"
            )
        can_cross = self.cross_fit and self.n_models >= 3 and self.segment_column is None
        if self.calibration == "cross" and not can_cross:
            raise InputError(
                "calibration='cross' needs a cross-fitted ensemble (cross_fit=True, n_models >= 3), got "
                f"cross_fit={self.cross_fit!r}, n_models={self.n_models!r}"
            )
        n_cal = max(round(n_normal * self.cal_fraction), 1)
        rule = self.calibration
        if rule == "auto":
            rule = "split" if not can_cross or n_cal >= SPLIT_MIN_EXCEEDANCES / self.alpha else "cross"
        if rule == "cross":
            need = self._min_cross_rows()
            if n_normal < need:
                raise InputError(
                    f"alpha={self.alpha} needs at least {need} normal training {self.unit}, got {n_normal}: "
                    f"give at least {need} {self.unit} or raise alpha"
                )
            return rule
        need = min_calibration_rows(self.alpha)
        if n_cal < need:
            least = math.ceil(need / self.cal_fraction) if not can_cross else self._min_cross_rows()
            raise InputError(
                f"alpha={self.alpha} needs at least {need} calibration {self.unit}, got {n_cal} "
                f"({self.cal_fraction:.0%} of {n_normal} normal training {self.unit} are held out to calibrate): "
                f"give at least {least} {self.unit}"
                + (" and calibration='cross' (or 'auto')" if can_cross else "")
                + " or raise alpha"
            )
        return rule

    def _fit_references(
        self, n_pool: int, cap: int, codes: Callable[[nn.Module, np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """Keep each member's reference codes: ``codes(model, pick)`` of at most ``cap`` of the ``n_pool``
        normal training inputs (a seeded sample beyond the cap; only inputs whose code is finite under every
        member).

        Returns:
            (n_pool,) bool: which inputs are references (they are measured leaving themselves out).
        """
        self._knn = self._centre = None
        pick = reference_rows(n_pool, self.seed, cap)
        own, kept = finite_references(n_pool, pick, [codes(m, pick) for m in self.models_])
        self.latent_codes_ = [np.asarray(c, dtype=np.float32) for c in kept]
        return own

    @staticmethod
    def _scale_row(likelihood: np.ndarray, distances: Sequence[np.ndarray], cond: np.ndarray | None) -> list[float]:
        """One member's row of ``score_scale_`` from its terms on its validation inputs."""
        row = list(robust_scale(likelihood))
        for d in distances:
            row += robust_scale(d)
        if cond is not None:
            row += robust_scale(cond)
        return row

    def _standardised(
        self, i: int, likelihood: np.ndarray, distances: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Member i's likelihood term and each distance, standardised by its row of ``score_scale_``."""
        assert self.score_scale_ is not None
        scale = self.score_scale_[i]
        return (likelihood - scale[0]) / scale[1], [
            (d - scale[2 + 2 * j]) / scale[3 + 2 * j] for j, d in enumerate(distances)
        ]

    def _member_total(
        self, i: int, likelihood: np.ndarray, distances: Sequence[np.ndarray], cond: np.ndarray | None = None
    ) -> np.ndarray:
        """(n,) member i's score from its raw terms: the standardised likelihood term (averaged with the
        standardised conditional term when there is one) plus the weighted standardised distances."""
        total, terms = self._standardised(i, likelihood, distances)
        if cond is not None:
            scale = self.score_scale_[i]  # type: ignore[index]
            c = 2 + 2 * len(distances)
            total = 0.5 * (total + (cond - scale[c]) / scale[c + 1])
        for w, t in zip(self.density_weights(), terms, strict=True):
            if w:
                total = total + w * t
        return total

    def _calibrate(self, scores: np.ndarray) -> None:
        """Split-conformal: set the calibration scores and the threshold at ``alpha`` (a non-finite score sorts
        above every finite one; the table flow names the row that caused it)."""
        self.calibration_rule_ = "split"
        self.fold_scores_ = []
        self.calibration_scores_ = np.asarray(scores, dtype=np.float64)
        self.threshold_ = conformal_threshold(self.calibration_scores_, self.alpha)

    def _calibrate_cross(self, fold_scores: Sequence[np.ndarray]) -> None:
        """Cross-conformal: keep each member's out-of-fold scores (sorted) and set the threshold on the scale of
        :func:`pipeline.calibrate.conformal.cross_conformal_scores`."""
        self.calibration_rule_ = "cross"
        self.fold_scores_ = [np.sort(np.asarray(f, dtype=np.float64)) for f in fold_scores]
        self.calibration_scores_ = cross_calibration_scores(sum(len(f) for f in self.fold_scores_))
        self.threshold_ = conformal_threshold(self.calibration_scores_, self.alpha)

    def split_conformal_rows(self) -> int:
        """Enough normal training inputs for ``auto`` to calibrate split-conformal at ``alpha``."""
        return math.ceil(SPLIT_MIN_EXCEEDANCES / self.alpha / self.cal_fraction)

    def calibration_description(self) -> str:
        """One line saying which rule made the threshold and what it guarantees (summaries, MLflow)."""
        n = len(self.calibration_scores_)
        if self.calibration_rule_ == "cross":
            return (
                f"cross-conformal over {len(self.fold_scores_)} folds of {n} normal training {self.unit}: "
                "p = (1 + sum_k #{r in fold k: z_k(r) >= z_k(x)}) / (n + 1), flag p <= alpha; false-positive rate "
                "<= 2 alpha in the worst case (Barber et al. 2021), about alpha measured"
            )
        return (
            f"split-conformal on {n} held-out calibration {self.unit}: the k-th smallest calibration score, "
            "k = ceil((n + 1)(1 - alpha)); false-positive rate <= alpha"
        )

    def _ensemble_score(self, member_scores: np.ndarray) -> np.ndarray:
        """(n,) the detector's score from its members' scores (K, n): their mean, or under cross-conformal
        calibration the cross-conformal score of :func:`pipeline.calibrate.conformal.cross_conformal_scores`."""
        if self.calibration_rule_ == "cross":
            return cross_conformal_scores(self.fold_scores_, member_scores)
        return np.mean(member_scores, axis=0)

    # ------------------------------------------------------------- scoring
    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise ModelError(f"this {type(self).__name__} is not fitted yet: call fit() or load()")

    def score_samples(self, data: Any) -> np.ndarray:
        raise NotImplementedError

    def predict(self, data: Any) -> np.ndarray:
        """(n,) 0/1 labels: 1 where the score is above the calibrated threshold (its segment's, with segments)."""
        self._check_fitted()
        return (self.score_samples(data) > self.thresholds(data)).astype(np.int64)

    def thresholds(self, data: Any) -> np.ndarray | float:
        """Each input's threshold at ``alpha``: ``threshold_`` (the table detector's segments override it)."""
        return self.threshold_

    # ---------------------------------------------------------- save / load
    def params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _meta(self) -> dict[str, Any]:
        """The subclass's own metadata (its fitted preprocessing and network configuration)."""
        raise NotImplementedError

    @classmethod
    def _from_meta(cls, meta: dict[str, Any]) -> EnsembleDetector:
        """A detector with the saved parameters and the subclass's own metadata restored (not its members)."""
        raise NotImplementedError

    def _new_model(self) -> nn.Module:
        """An untrained member of the saved shape (its weights are loaded into it)."""
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to a folder: JSON metadata, .npy calibration scores, tensor-only weights."""
        self._check_fitted()
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "params": self.params(),
            "train_config": self.train_config.to_dict() if self.train_config else None,
            "threshold": self.threshold_,
            "calibration_rule": self.calibration_rule_,
            "segments": None if self.segments_ is None else self.segments_.to_dict(),
            "n_rows": self.n_rows_,
            "score_scale": None if self.score_scale_ is None else self.score_scale_.tolist(),
            "histories": [h.__dict__ for h in self.histories_],
            **self._meta(),
        }
        return write_model_files(d, self.meta_file, meta, self)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Any:
        """Load a detector saved by :meth:`save`; weights load with ``torch.load(weights_only=True)``.

        Raises:
            ModelError: the folder or one of its files is missing or unreadable, or of another format or kind.
        """
        d = Path(path)
        for f in (cls.meta_file, CAL_FILE, WEIGHTS_FILE):
            if not (d / f).is_file():
                raise ModelError(f"model folder {d} is incomplete: {f} is missing")
        try:
            meta = json.loads((d / cls.meta_file).read_text())
            version = meta.get("format_version")
            if version != FORMAT_VERSION:
                raise ModelError(
                    f"{cls.kind} model in {d} has format {version!r}; this version reads format {FORMAT_VERSION}: "
                    "train the model again with this version"
                )
            if meta.get("kind") != cls.kind:
                raise ModelError(f"model in {d} is of kind {meta.get('kind')!r}, expected {cls.kind!r}")
            det = cls._from_meta(meta)
            restore_members(det, d, meta, det._new_model, device)
        except ModelError:
            raise
        except pickle.UnpicklingError as e:  # weights_only=True refused a non-tensor object: never run it
            raise ModelError(
                f"model weights in {d} refused: the file holds pickled objects other than tensors "
                "(weights load with torch.load(weights_only=True)); do not use this model"
            ) from e
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ModelError(f"cannot load {cls.kind} model from {d}: {type(e).__name__}: {e}") from e
        return det
