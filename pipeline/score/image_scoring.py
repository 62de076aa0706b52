"""Scoring images: a batch into a CSV report, a contact sheet and a summary (no orchestration), and the
images a frame carries (the pyfunc's predict).

A batch's report has one row per input image, in input order: ``path`` (relative to the input root),
``score``, ``threshold``, ``is_anomaly`` (0/1), ``p_value`` (``q_value`` with an FDR rule) and ``error``.
An image that cannot be decoded keeps its row: ``error`` says why, and its score, flag and p-value are
empty. Flags, p-values and batch health are computed over the decoded images only.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.calibrate.rules import FlagRule
from pipeline.data.image_decode import IMAGE_FORMATS, decode_error, decode_image, decode_image_bytes
from pipeline.data.images import batch_name
from pipeline.data.paths import confined_file
from pipeline.detect.image_detector import ImageVAEDetector
from pipeline.errors import InputError
from pipeline.score.image_source import ImageSource, images_per_chunk
from pipeline.score.report import REPORT_SUFFIX
from pipeline.score.scoring import score_batch
from pipeline.score.summary import ScoreSummary

CONTACT_SUFFIX = ".contact_sheet.png"
IMAGE_COLUMN, PATH_COLUMN = "image", "path"
IMAGE_ROOT_ENV = "VAE_ANOMALY_IMAGE_ROOT"
"""The environment variable the pyfunc takes ``image_root`` from (read in flows.pyfunc; named here for messages)."""


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
    """Score one batch of images with the scoring engine (:func:`pipeline.score.scoring.score_batch`): write
    ``<out>/<name>.anomalies.csv``, ``<name>.contact_sheet.png`` and the page ``<name>.report.html``.

    Args:
        source: a folder, an IDX/.npz file, or a list of image files / globs (see pipeline.data.images.read_images).
        rule: flag rule; default: p <= the model's alpha.
        top_k: images on the contact sheet (the most anomalous ones); 0 for none.

    Raises:
        InputError: missing or empty input, no decodable image, unwritable output.
    """
    out, name = Path(out_dir), batch_name(source)
    src = ImageSource(det, source, top_k, out / f"{name}{CONTACT_SUFFIX}")
    target = out / f"{name}{REPORT_SUFFIX}"
    model = (model_uri, model_name, model_version)
    return score_batch(det, src, target, rule, model=model, chunk_rows=images_per_chunk(det))


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
