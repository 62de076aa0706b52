"""An image batch as the scoring engine reads it: images decoded a bounded number at a time, scored, and the
most anomalous ones kept for the contact sheet."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.images import ImageSet, count_notes, digest, image_chunks, list_images, relative_paths
from pipeline.detect.image_detector import CHUNK, ImageVAEDetector
from pipeline.errors import InputError
from pipeline.score.image_plots import contact_sheet
from pipeline.score.source import Layout, Scored

log = logging.getLogger(__name__)

# Decoded pixels (float32) of one chunk at the most: 1,024 images (one model batch) up to 256x256 grey, 445 RGB
# images of 224x224. One chunk is decoded while the one before it is scored (benchmarks/image_scoring.py).
CHUNK_BYTES = 256 * 2**20


def images_per_chunk(det: ImageVAEDetector) -> int:
    """Images decoded and scored at a time: one model batch (``CHUNK``), fewer for large images."""
    h, w = det.image_size
    return int(min(CHUNK, max(CHUNK_BYTES // (4 * h * w * (3 if det.image_mode == "RGB" else 1)), 1)))


class ImageSource:
    """One batch of images: a folder, an IDX/.npz file, or image files and globs taken together.

    Each image's report row has its ``path`` (relative to the batch's root) and ``error``: why it could not be
    decoded, when it could not (that row has no score, flag or p-value).
    """

    missing_rows = None

    def __init__(
        self, det: ImageVAEDetector, source: str | Path | Sequence[str | Path], top_k: int, sheet: Path
    ) -> None:
        """Finds the batch's images (raising InputError as :func:`pipeline.data.images.read_images` does)."""
        self.det, self.top_k, self.sheet = det, top_k, sheet
        self.name = str(source) if isinstance(source, str | Path) else ", ".join(str(s) for s in source)
        self.root, self.files = list_images(source, det.image_mode)
        self.counts: Counter[str] = Counter()
        self.images = self.errors = 0
        self.first_error = ""
        self.labelled: set[int] = set()
        self.best: tuple[np.ndarray, np.ndarray, list[str], np.ndarray] | None = None  # scores, index, paths, pixels

    def chunks(self, rows: int, on_read: Callable[[float], None]) -> Iterator[ImageSet]:
        """Decoded chunks of ``rows`` images.

        Raises:
            InputError: after the last chunk, when not one image could be decoded.
        """
        total = max(len(self.files), 1) if self.files is not None else 1
        for chunk, counts in image_chunks(self.root, self.files, self.det.image_mode, self.det.image_size, rows):
            self.counts.update(counts)
            bad = [i for i, e in enumerate(chunk.errors) if e]
            if bad and not self.first_error:
                self.first_error = f"{chunk.paths[bad[0]]}: {chunk.errors[bad[0]]}"
            self.images, self.errors = self.images + len(chunk), self.errors + len(bad)
            if chunk.labels is not None:
                self.labelled.update(np.unique(chunk.labels).tolist())
            on_read(min(self.images / total, 1.0))
            yield chunk
        if self.images and self.errors == self.images:
            raise InputError(
                f"{self.root}: none of the {self.images} images could be decoded (first: {self.first_error})"
            )

    def sha256(self) -> str:
        return digest(self.root, relative_paths(self.root, self.files) if self.files is not None else [])

    def start(self, chunk: ImageSet) -> Layout:
        return Layout(["path"], ["error"], ["path", "score", "p_value"])

    def score(self, chunk: ImageSet, offset: int) -> Scored:
        """The decoded images' scores (NaN for the others); the most anomalous are kept for the contact sheet."""
        read = chunk.ok
        scores = np.full(len(chunk), np.nan)
        if read.any():
            scores[read] = self.det.score_samples(chunk.pixels)
            self._keep_best(chunk, scores, offset)
        return Scored(scores)

    def columns(self, chunk: ImageSet, scored: Scored, offset: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        return pd.DataFrame({"path": list(chunk.paths)}), pd.DataFrame({"error": list(chunk.errors)})

    def finish(self, threshold: float) -> dict[str, Any]:
        """The batch's notes, its counts and its contact sheet (the ``top_k`` highest scores, with their
        reconstructions; none with ``top_k`` 0)."""
        notes = count_notes(self.counts)
        if self.errors:
            log.warning("%s: %d of %d images could not be decoded", self.root, self.errors, self.images)
            notes.append(f"{self.errors} of {self.images} images could not be decoded: see the report's error column")
        if len(self.labelled) > 1:
            notes.append("labels found beside the images: not used for scoring")
        sheet = None
        if self.best is not None and self.top_k > 0:
            scores, _, paths, pixels = self.best
            recon, err = self.det.reconstruct(pixels)
            sheet = str(contact_sheet(pixels, recon, err, scores, paths, threshold, self.sheet))
        return {"notes": notes, "contact_sheet": sheet, "scored": self.images - self.errors, "errors": self.errors}

    def _keep_best(self, chunk: ImageSet, scores: np.ndarray, offset: int) -> None:
        """Keep the ``top_k`` highest scores so far (ties: the earlier image), with their paths and pixels."""
        if self.top_k <= 0:
            return
        read = np.flatnonzero(chunk.ok)
        s, index = scores[read], offset + read
        best = np.lexsort((index, -s))[: self.top_k]  # this chunk's best first: pixels holds the decoded images only
        s, index, pixels = s[best], index[best], chunk.pixels[best]
        paths = [chunk.paths[read[i]] for i in best]
        if self.best is not None:
            s, index = np.r_[self.best[0], s], np.r_[self.best[1], index]
            paths, pixels = [*self.best[2], *paths], np.concatenate([self.best[3], pixels])
        keep = np.lexsort((index, -s))[: self.top_k]
        self.best = (s[keep], index[keep], [paths[i] for i in keep], pixels[keep])
