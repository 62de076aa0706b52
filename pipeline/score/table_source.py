"""A table file as the scoring engine reads it: chunks validated against the schema, scored and explained."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.calibrate.metrics import labels_from
from pipeline.data.io import iter_table
from pipeline.detect.attribution import attribution_columns
from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.detect.detector_scoring import Explanation
from pipeline.errors import InputError
from pipeline.score.score_errors import at_row, check_finite
from pipeline.score.score_stream import file_sha256, recut
from pipeline.score.source import Layout, Scored

ATTRIBUTION = ("top_features", "top_observed", "top_expected")


class TableSource:
    """A CSV or Parquet file: each row's report has its row number, ids, attribution and missing-cell count.

    Row numbers in errors count from the start of the file.
    """

    def __init__(
        self, det: VAEAnomalyDetector, path: str | Path, label_column: str | None = None, read_rows: int | None = None
    ) -> None:
        self.det, self.path, self.name = det, Path(path), str(path)
        self.label_column, self.read_rows = label_column, read_rows
        self.label: str | None = None
        self.missing_rows = 0
        self._validated: tuple[pd.DataFrame, pd.DataFrame] | None = None  # the first chunk's, kept by start()

    def chunks(self, rows: int, on_read: Callable[[float], None]) -> Iterator[pd.DataFrame]:
        return recut(iter_table(self.path, self.det.schema_.id_columns, self.read_rows or rows, on_read), rows)

    def sha256(self) -> str:
        return file_sha256(self.path)

    def start(self, chunk: pd.DataFrame) -> Layout:
        """Validates the first chunk (before any other check, as every later chunk is) and finds the label."""
        schema = self.det.schema_
        self._validated = (chunk, self._validate(chunk, 0))
        self.label = self.label_column or (schema.label_column if schema.label_column in chunk.columns else None)
        if self.label and self.label not in chunk.columns:
            raise InputError(f"{self.path}: label column {self.label!r} not found")
        before, after = ["row", *schema.id_columns], [*ATTRIBUTION, "missing"]
        return Layout(before, after, [*before, "score", "p_value", *after], self.label)

    def score(self, chunk: pd.DataFrame, offset: int) -> Scored:
        """Scores (checked finite) and attribution of a validated chunk; its labels and segment values."""
        det = self.det
        if self._validated is not None and self._validated[0] is chunk:
            features = self._validated[1]
        else:
            features = self._validate(chunk, offset)
        self._validated = None
        scores, explanation = score_features(det, features, self.name, offset, explain=True)
        labels = None
        if self.label:
            try:
                labels = labels_from(chunk[self.label].to_numpy(), self.label).astype(np.int8)
            except InputError as e:
                raise at_row(e, offset) from e
        segments = chunk[det.segments_.column] if det.segments_ is not None else None
        return Scored(scores, labels, segments, explanation)

    def columns(self, chunk: pd.DataFrame, scored: Scored, offset: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``row`` and the id columns; the attribution and each row's count of empty feature cells (counted for the
        page: chunks come here one at a time, in order)."""
        schema = self.det.schema_
        before = pd.DataFrame({"row": np.arange(offset, offset + len(chunk), dtype=np.int64)})
        for c in schema.id_columns:
            before[c] = pd.Series(chunk[c].to_numpy(dtype=object), dtype=object)
        attribution = attribution_columns(self.det, chunk, scored.detail)
        after = pd.DataFrame({c: pd.Series(attribution[c].to_numpy(dtype=object), dtype=object) for c in ATTRIBUTION})
        after["missing"] = chunk[list(schema.features)].isna().sum(axis=1).to_numpy(dtype=np.int64)
        self.missing_rows += int((after["missing"].to_numpy() > 0).sum())
        return before, after

    def finish(self, threshold: float) -> dict[str, object]:
        return {}

    def _validate(self, chunk: pd.DataFrame, offset: int) -> pd.DataFrame:
        schema = self.det.schema_
        if offset:  # columns the model ignores were warned about once, on the first chunk
            known = {*schema.features, *schema.id_columns}
            chunk = chunk[[c for c in chunk.columns if c in known]]
        try:
            return schema.validate(chunk, source=self.name)
        except InputError as e:
            raise at_row(e, offset, self.name) from e


def score_features(
    det: VAEAnomalyDetector, features: pd.DataFrame, source: str = "input", offset: int = 0, explain: bool = False
) -> tuple[np.ndarray, Explanation | None]:
    """(n,) scores of validated ``features`` and, with ``explain``, each row's attribution: the one scoring call
    of a table's rows, for the engine's chunks and the pyfunc's frames alike. Every score is finite.

    Raises:
        InputError: a row's score overflows (a value far outside the training range, e.g. 1e308): names the
            row (counted from ``offset``), the column and the value.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected by check_finite, row by row
        scores, explanation = det.score_and_explain(features) if explain else (det.score_validated(features), None)
    check_finite(det, features, scores, source, offset)
    return scores, explanation
