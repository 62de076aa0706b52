"""Scoring one batch of images into a CSV report, a contact sheet and a summary (no orchestration).

The report has one row per input image, in input order: ``path`` (relative to the input root),
``score``, ``threshold``, ``is_anomaly`` (0/1), ``p_value`` (``q_value`` with an FDR rule) and ``error``.
An image that cannot be decoded keeps its row: ``error`` says why, and its score, flag and p-value are
empty. Flags, p-values and batch health are computed over the decoded images only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import InputError
from pipeline.health import batch_health
from pipeline.image_detector import ImageVAEDetector
from pipeline.image_plots import contact_sheet
from pipeline.images import ImageSet, batch_name, digest, read_images
from pipeline.metrics import labelled_metrics
from pipeline.report import REPORT_SUFFIX, neutralise_cell, write_csv_atomic, write_text_atomic
from pipeline.rules import FlagRule, apply_rule

CONTACT_SUFFIX = ".contact_sheet.png"


@dataclass(frozen=True)
class ImageSummary:
    """What one scored image batch produced (the keys of the tabular summary, plus image fields)."""

    input: str
    report: str
    contact_sheet: str | None
    rows: int
    scored: int
    errors: int
    flagged: int
    flagged_fraction: float
    threshold: float
    rule: str
    alpha: float
    input_sha256: str
    model_uri: str
    model_name: str | None
    model_version: str | None
    auroc: float | None
    seconds: float
    health: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_image_report(images: ImageSet, scores: np.ndarray, flags: Any) -> pd.DataFrame:
    """The report frame; ``scores`` and the flags' arrays cover the decoded images only (in order)."""
    ok = images.ok
    n = len(images)
    score = np.full(n, np.nan)
    score[ok] = scores
    p = np.full(n, np.nan)
    p[ok] = flags.p_value
    flag = np.full(n, None, dtype=object)
    flag[ok] = [int(v) for v in flags.is_anomaly]
    out = pd.DataFrame(
        {
            "path": [neutralise_cell(x) for x in images.paths],
            "score": score,
            "threshold": float(flags.threshold),
            "is_anomaly": flag,
            "p_value": p,
        }
    )
    if flags.q_value is not None:
        q = np.full(n, np.nan)
        q[ok] = flags.q_value
        out["q_value"] = q
    out["error"] = [neutralise_cell(e) for e in images.errors]
    return out


def score_images_batch(
    det: ImageVAEDetector,
    source: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    model_uri: str = "",
    model_name: str | None = None,
    model_version: str | None = None,
    rule: FlagRule | None = None,
    top_k: int = 16,
) -> ImageSummary:
    """Score one batch of images; write ``<out>/<name>.anomalies.csv`` and ``<name>.contact_sheet.png``.

    Args:
        source: a folder, an IDX/.npz file, or a list of image files / globs (see pipeline.images.read_images).
        rule: flag rule; default: p <= the model's alpha.
        top_k: images on the contact sheet (the most anomalous ones).

    Raises:
        InputError: missing or empty input, no decodable image, unwritable output.
    """
    t0 = time.perf_counter()
    rule = rule or FlagRule("alpha", det.alpha)
    images = read_images(source, mode=det.image_mode, size=det.image_size)
    name = batch_name(source)
    out = Path(out_dir)
    target = out / f"{name}{REPORT_SUFFIX}"
    if not images.ok.any():
        raise InputError(
            f"{images.root}: none of the {len(images)} images could be decoded "
            f"(first: {images.paths[0]}: {images.errors[0]})"
        )
    scores = det.score_samples(images.pixels)
    flags = apply_rule(rule, scores, det.calibration_scores_)
    report = build_image_report(images, scores, flags)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(report, target)
    except OSError as e:
        raise InputError(f"cannot write report {target}: {e.strerror or e}") from e
    sheet = _contact_sheet(det, images, scores, flags.threshold, out / f"{name}{CONTACT_SUFFIX}", top_k)
    level = det.alpha if rule.kind == "fdr" else flags.effective_level
    health = batch_health(scores, det.calibration_scores_, int((flags.p_value <= level).sum()), level)
    notes = list(images.notes)
    n_err = int((~images.ok).sum())
    if n_err:
        notes.append(f"{n_err} of {len(images)} images could not be decoded: see the report's error column")
    if health.warning:
        notes.append(health.warning)
    metrics = None
    if images.labels is not None and len(np.unique(images.labels)) > 1:
        notes.append("labels found beside the images: not used for scoring")
    flagged = int(flags.is_anomaly.sum())
    return ImageSummary(
        input=str(source if isinstance(source, str | Path) else ", ".join(str(s) for s in source)),
        report=str(target),
        contact_sheet=None if sheet is None else str(sheet),
        rows=len(images),
        scored=int(images.ok.sum()),
        errors=n_err,
        flagged=flagged,
        flagged_fraction=flagged / len(scores),
        threshold=float(flags.threshold),
        rule=rule.describe(),
        alpha=det.alpha,
        input_sha256=digest(images),
        model_uri=model_uri,
        model_name=model_name,
        model_version=model_version,
        auroc=None,
        seconds=time.perf_counter() - t0,
        health=health.to_dict(),
        metrics=metrics,
        notes=notes,
    )


def _contact_sheet(
    det: ImageVAEDetector, images: ImageSet, scores: np.ndarray, threshold: float, path: Path, top_k: int
) -> Path | None:
    if top_k <= 0:
        return None
    top = np.argsort(-scores, kind="stable")[:top_k]
    recon, err = det.reconstruct(images.pixels[top])
    ok_paths = [p for p, good in zip(images.paths, images.ok, strict=True) if good]
    return contact_sheet(images.pixels[top], recon, err, scores[top], [ok_paths[i] for i in top], threshold, path)


def evaluate_labels(report: pd.DataFrame, labels: np.ndarray) -> dict[str, Any]:
    """Labelled metrics (1 = anomaly) of a report's decoded rows; labels (n,) in report order."""
    ok = report["error"].fillna("").eq("").to_numpy()
    return labelled_metrics(
        np.asarray(labels)[ok], report["score"].to_numpy()[ok], report["is_anomaly"].to_numpy()[ok].astype(int)
    )


def write_image_summary(summary: ImageSummary, path: str | Path) -> Path:
    """The summary as JSON (``<name>.summary.json`` beside the report)."""
    return write_text_atomic(json.dumps(summary.to_dict(), indent=1, default=str), path)


def score_image_paths(det: ImageVAEDetector, frame: pd.DataFrame) -> pd.DataFrame:
    """Score the image files named in ``frame["path"]``, one output row per input row (the pyfunc's predict).

    Returns:
        A frame with ``score``, ``threshold``, ``is_anomaly`` (0/1, NaN where undecodable) and ``error``.

    Raises:
        InputError: ``frame`` has no ``path`` column.
    """
    from pipeline.images import decode_image

    if "path" not in frame.columns:
        raise InputError(f"an image model takes a column 'path' of image files, got columns {list(frame.columns)}")
    n = len(frame)
    pixels, ok, errors = [], np.zeros(n, dtype=bool), [""] * n
    for i, p in enumerate(frame["path"].astype(str)):
        try:
            pixels.append(decode_image(Path(p), det.image_mode, det.image_size)[0])
            ok[i] = True
        except Exception as e:  # one bad file is one row's error, never the batch's
            errors[i] = f"cannot decode image: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    score = np.full(n, np.nan)
    if pixels:
        score[ok] = det.score_samples(np.stack(pixels))
    flag = np.where(ok, (score > det.threshold_).astype(np.float64), np.nan)
    return pd.DataFrame({"score": score, "threshold": det.threshold_, "is_anomaly": flag, "error": errors})
