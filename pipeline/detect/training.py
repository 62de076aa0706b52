"""Training for both kinds of data: read and check the inputs, fit a detector, evaluate labelled anomalies."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.calibrate.conformal import check_alpha
from pipeline.data.images import ImageSet, read_training_images
from pipeline.data.io import read_table
from pipeline.data.schema import most_extreme
from pipeline.data.split import MIN_ROWS
from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.detect.image_detector import ImageVAEDetector
from pipeline.errors import InputError

Detector = VAEAnomalyDetector | ImageVAEDetector


@dataclass
class TrainingData:
    """What a training run reads: a table (``frame``) or a set of images (``images``), and its source."""

    source: str
    frame: pd.DataFrame | None = None
    images: ImageSet | None = None
    notes: list[str] = field(default_factory=list)


def read_training_data(det: Detector, sources: list[str], normal_label: int | None = None) -> TrainingData:
    """Read what ``det`` trains on: one table (CSV/Parquet), or images (folders, files, globs, IDX/.npz).

    Raises:
        InputError: an unreadable input, too few rows for the detector's alpha, or (images) a
            ``normal_label`` the input does not have.
    """
    if det.kind == "image":
        images = select_label(read_training_images(sources[0] if len(sources) == 1 else sources), normal_label)
        n_err = sum(1 for e in images.errors if e)
        notes = [*images.notes, *([f"{n_err} undecodable images left out"] if n_err else [])]
        return TrainingData(str(images.root), images=images, notes=notes)
    [path] = sources
    df = read_table(path, str_columns=det.id_columns)
    check_enough_rows(det, len(df), str(path))
    return TrainingData(str(path), frame=df)


def check_enough_rows(det: VAEAnomalyDetector, n: int, source: str) -> None:
    """Refuse a table too small for the detector's alpha before training, saying how many rows it needs.

    Raises:
        InputError: fewer rows than training, or the conformal threshold at the detector's alpha, needs.
    """
    check_alpha(det.alpha)
    if n < MIN_ROWS:
        raise InputError(f"{source}: {n} rows, but training needs at least {MIN_ROWS}: give more rows")
    try:
        det.calibration_rule(n)
    except InputError as e:
        raise InputError(f"{source}: {e}") from e


def select_label(images: ImageSet, label: int | None) -> ImageSet:
    """Keep only the images with ``label`` (from an IDX/.npz file's labels); all images when None.

    Raises:
        InputError: a label was asked for but the input has no labels, or none of its images has it.
    """
    if label is None:
        return images
    if images.labels is None:
        raise InputError(
            f"{images.root}: --normal-label {label} needs labels (an IDX file with its "
            "*-labels-idx1-ubyte[.gz] sibling, or an .npz with 'labels' or 'y'); none found"
        )
    keep = images.labels == label
    if not keep.any():
        raise InputError(
            f"{images.root}: no image has label {label}; labels found: "
            f"{sorted(int(v) for v in np.unique(images.labels))}"
        )
    idx = np.flatnonzero(keep)
    return ImageSet(
        images.root,
        [images.paths[i] for i in idx],
        images.pixels[idx],
        [""] * len(idx),
        images.labels[idx],
        images.notes,
    )


def fit(det: Detector, data: TrainingData) -> float:
    """Fit ``det`` on ``data``; returns the fit's wall time in seconds.

    Raises:
        InputError: the data cannot train a model (named by its source), a calibration score that
            overflows, or a loss that overflows (with the most extreme value of a table, when one is).
    """
    t0 = time.perf_counter()
    try:
        if data.images is not None:
            det.fit(data.images.pixels)
        else:
            det.fit(data.frame)
            _check_calibration_finite(det, data)
    except InputError as e:
        raise e if str(e).startswith(data.source) else InputError(f"{data.source}: {e}") from e
    except FloatingPointError as e:  # the loss overflowed: almost always a value far outside the rest
        raise InputError(f"{data.source}: training failed ({e}){_extreme_hint(det, data)}") from e
    return time.perf_counter() - t0


def _check_calibration_finite(det: VAEAnomalyDetector, data: TrainingData) -> None:
    if np.isfinite(det.calibration_scores_).all():
        return
    from pipeline.score.table_source import score_features

    source = data.source
    score_features(det, det.schema_.validate(data.frame, source=source, require_ids=False), source)  # names it
    raise InputError(f"{source}: some calibration scores are not finite: remove extreme values")


def _extreme_hint(det: Detector, data: TrainingData) -> str:
    schema = getattr(det, "schema_", None)
    if schema is None or data.frame is None:
        return ""
    where = most_extreme(schema.validate(data.frame, source=""), schema.numeric)
    if where is None or where[3] < 1e6:  # nothing extreme: the hint would mislead
        return ""
    column, row, value, dist = where
    return (
        f": column {column!r} row {row} holds {value!r}, {dist:.3g} robust standard deviations from its "
        "median; remove or cap such values"
    )


def evaluate_labelled(det: Detector, data: TrainingData) -> tuple[dict[str, float], np.ndarray | None]:
    """AUROC of a table's labelled anomalies (kept out of training) against the calibration rows, and
    their scores; nothing for images or a table without labelled anomalies."""
    label = getattr(getattr(det, "schema_", None), "label_column", None)
    if data.frame is None or not label:
        return {}, None
    anomalies = data.frame[pd.to_numeric(data.frame[label], errors="coerce") == 1]
    if anomalies.empty:
        return {}, None
    from sklearn.metrics import roc_auc_score

    s_anom = det.score_samples(anomalies)
    s_cal = det.calibration_scores_
    y = np.r_[np.zeros(len(s_cal)), np.ones(len(s_anom))]
    return {
        "eval_auroc": float(roc_auc_score(y, np.r_[s_cal, s_anom])),
        "eval_recall_at_threshold": float(np.mean(s_anom > det.threshold_)),
    }, s_anom


def training_summary(det: Detector, data: TrainingData, fit_seconds: float) -> dict[str, Any]:
    """The fitted detector in a few fields: threshold, calibration, row counts, epochs, fit wall time."""
    h = det.history_
    out: dict[str, Any] = {"threshold": det.threshold_, "alpha": det.alpha}
    if isinstance(det, VAEAnomalyDetector):
        out["calibration"] = det.calibration_description()
        if det.segments_ is not None:
            seg = det.segments_
            out["segments"] = seg.calibration_rows()
            out["segments_pooled"] = seg.small
    out.update(det.n_rows_)
    if data.images is not None:
        out["image_mode"] = det.image_mode
        out["image_size"] = "x".join(map(str, det.image_size))
        out["undecodable"] = sum(1 for e in data.images.errors if e)
        out["notes"] = data.images.notes
    out["epochs"] = len(h.train_loss)
    out["best_epoch"] = h.best_epoch
    if isinstance(det, VAEAnomalyDetector):
        out["kl_weight"] = det.kl_weight_
    out["train_seconds"] = round(fit_seconds, 2)
    out["device"] = h.device
    return out
