"""Scoring one batch of images into a CSV report, a contact sheet and a summary (no orchestration).

The report has one row per input image, in input order: ``path`` (relative to the input root),
``score``, ``threshold``, ``is_anomaly`` (0/1), ``p_value`` (``q_value`` with an FDR rule) and ``error``.
An image that cannot be decoded keeps its row: ``error`` says why, and its score, flag and p-value are
empty. Flags, p-values and batch health are computed over the decoded images only.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.calibrate.health import batch_health
from pipeline.calibrate.metrics import labelled_metrics
from pipeline.calibrate.rules import FlagRule, apply_rule
from pipeline.data.image_decode import IMAGE_FORMATS, decode_error, decode_image, decode_image_bytes
from pipeline.data.images import ImageSet, batch_name, digest, read_images
from pipeline.data.paths import confined_file
from pipeline.detect.image_detector import ImageVAEDetector
from pipeline.errors import InputError
from pipeline.score.html_report import ScoreHistogram, TopFlagged, write_html_report
from pipeline.score.image_plots import contact_sheet
from pipeline.score.report import REPORT_SUFFIX, write_csv_atomic
from pipeline.score.summary import ScoreSummary

CONTACT_SUFFIX = ".contact_sheet.png"
IMAGE_COLUMN, PATH_COLUMN = "image", "path"
IMAGE_ROOT_ENV = "VAE_ANOMALY_IMAGE_ROOT"
"""The environment variable the pyfunc takes ``image_root`` from (read in flows.pyfunc; named here for messages)."""


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
            "path": list(images.paths),
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
    out["error"] = list(images.errors)
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
) -> ScoreSummary:
    """Score one batch of images; write ``<out>/<name>.anomalies.csv`` and ``<name>.contact_sheet.png``.

    Args:
        source: a folder, an IDX/.npz file, or a list of image files / globs (see pipeline.data.images.read_images).
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
    flagged_at_level = int((flags.p_value <= level).sum())
    health = batch_health(
        scores, det.calibration_scores_, flagged_at_level, level, unit="images", threshold=det.threshold_
    )
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
    summary = ScoreSummary(
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
        calibration=det.calibration_description(),
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
    hist = ScoreHistogram(det.calibration_scores_, det.threshold_)
    hist.add(scores)
    top = TopFlagged()
    top.add(report)
    page = write_html_report(summary.to_dict(), hist, top.rows, ["path", "score", "p_value"], sheet)
    return dataclasses.replace(summary, report_html=str(page))


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


def score_image_frame(det: ImageVAEDetector, frame: pd.DataFrame, image_root: str | Path | None = None) -> pd.DataFrame:
    """Score the images a frame carries, one output row per input row, in order (the pyfunc's predict).

    A column ``image`` holds PNG/JPEG/BMP files' bytes, base64-encoded (or raw ``bytes``); else a column ``path``
    names image files, read only under ``image_root`` (relative paths from there) and refused without one;
    a path that is missing and one outside the root get the same error. A cell that cannot be read or decoded
    is that row's ``error``; the other rows are scored.

    Returns:
        A frame with ``score`` (NaN where ``error``), ``threshold``, ``is_anomaly`` (0/1, None where ``error``)
        and ``error`` ('' when decoded).

    Raises:
        InputError: no ``image`` column and no ``path`` column, a ``path`` column without ``image_root``,
            or an ``image_root`` that is not a folder.
    """
    column, read = _cell_reader(frame, image_root)
    n = len(frame)
    pixels, ok, errors = [], np.zeros(n, dtype=bool), [""] * n
    for i, cell in enumerate(frame[column].tolist()):
        try:
            pixels.append(read(cell, det.image_mode, det.image_size))
            ok[i] = True
        except InputError as e:
            errors[i] = str(e)
        except Exception as e:  # Pillow raises many types for a bad image: the row carries the reason
            errors[i] = _decode_error(e)
    score = np.full(n, np.nan)
    if pixels:
        score[ok] = det.score_samples(np.stack(pixels))
    flag = np.full(n, None, dtype=object)
    flag[ok] = [int(s > det.threshold_) for s in score[ok]]
    return pd.DataFrame({"score": score, "threshold": det.threshold_, "is_anomaly": flag, "error": errors})


CellReader = Callable[[Any, str, tuple[int, int]], np.ndarray]
"""(cell, mode, size) -> (C, H, W) pixels of one cell of the image column."""


def _cell_reader(frame: pd.DataFrame, image_root: str | Path | None) -> tuple[str, CellReader]:
    """The column of ``frame`` that carries the images (``image`` when both are there) and how to read a cell.

    Raises:
        InputError: see :func:`score_image_frame`.
    """
    columns = [str(c) for c in frame.columns]
    if IMAGE_COLUMN in columns:
        return IMAGE_COLUMN, _from_base64
    if PATH_COLUMN not in columns:
        raise InputError(
            f"an image model takes a column {IMAGE_COLUMN!r} of base64-encoded PNG/JPEG/BMP files, "
            f"got columns {columns[:20]}"
        )
    if image_root is None:
        raise InputError(
            f"a {PATH_COLUMN!r} column is not accepted: send the images' bytes base64-encoded in an "
            f"{IMAGE_COLUMN!r} column, or set {IMAGE_ROOT_ENV} on the server to a folder the paths lie in"
        )
    root = Path(image_root)
    if not root.is_dir():
        raise InputError(f"{IMAGE_ROOT_ENV} is not a folder: the server cannot read a {PATH_COLUMN!r} column")
    return PATH_COLUMN, partial(_from_path, root=root)


def _from_path(cell: Any, mode: str, size: tuple[int, int], root: Path) -> np.ndarray:
    """(C, H, W) pixels of the file one ``path`` cell names, once it is a regular file under ``root``.

    Raises:
        InputError: the same message for a path that is missing and one outside ``root``.
        OSError, ValueError: the file is not a PNG, JPEG or BMP image Pillow can decode.
    """
    return decode_image(confined_file(str(cell), root, "image"), mode, size, IMAGE_FORMATS)[0]


def _from_base64(cell: Any, mode: str, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) pixels of one ``image`` cell: base64 text (whitespace ignored) or raw bytes.

    Raises:
        InputError: the cell is neither text nor bytes, or not valid base64.
        OSError, ValueError: the bytes are not a PNG, JPEG or BMP image Pillow can decode.
    """
    if isinstance(cell, bytes | bytearray):
        return decode_image_bytes(bytes(cell), mode, size)[0]
    if not isinstance(cell, str) or not cell.strip():
        empty = cell is None or isinstance(cell, str) or (isinstance(cell, float) and np.isnan(cell))
        found = "nothing" if empty else f"a {type(cell).__name__}"
        raise InputError(f"{IMAGE_COLUMN!r} holds {found}, expected base64-encoded image bytes")
    try:
        data = base64.b64decode("".join(cell.split()), validate=True)
    except ValueError:  # binascii.Error
        raise InputError(f"{IMAGE_COLUMN!r} is not valid base64 (expected base64-encoded image bytes)") from None
    return decode_image_bytes(data, mode, size)[0]


def _decode_error(e: Exception) -> str:
    """One line saying why Pillow could not decode an image (never the file's server path)."""
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):  # Pillow's message would carry the server's file path
        return "cannot decode image: not a PNG, JPEG or BMP image"
    return decode_error(e)
