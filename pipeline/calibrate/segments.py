"""Per-segment thresholds (Mondrian conformal calibration, Vovk, Gammerman & Shafer 2005, ch. 4.5).

A segment is a value of one categorical column of the table (country, channel, machine). Its calibration rows
are the split-conformal calibration rows of that value, and a new row's p-value is computed against its own
segment's calibration scores only, so the false-positive rate holds within each segment:
P(p <= alpha | segment) <= alpha, not only on average over the mix. A segment with fewer calibration rows than
alpha needs (``min_calibration_rows``), and a value never seen in training, use the pooled calibration scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.calibrate.conformal import conformal_threshold, min_calibration_rows
from pipeline.data.schema import category_text

MISSING_SEGMENT = "(missing)"
POOLED = -1
"""The code of a row scored against the pooled calibration (a small or unseen segment)."""


def segment_values(column: pd.Series) -> np.ndarray:
    """(n,) object array: each row's segment as text (the category text of the schema; missing -> ``(missing)``)."""
    out = np.empty(len(column), dtype=object)
    for i, v in enumerate(column.to_numpy(dtype=object)):
        t = category_text(v)
        out[i] = t if isinstance(t, str) else MISSING_SEGMENT
    return out


@dataclass
class Segments:
    """The segments of a fitted detector.

    Attributes:
        column: the segment column.
        values: the segments with their own threshold, in order (their code is the position).
        calibration: per segment in ``values``, its sorted calibration scores.
        small: segments seen in the calibration rows with too few of them for alpha: value -> count.
    """

    column: str
    values: list[str]
    calibration: list[np.ndarray]
    small: dict[str, int] = field(default_factory=dict)

    @classmethod
    def fit(cls, column: str, labels: np.ndarray, scores: np.ndarray, alpha: float) -> Segments:
        """Group the calibration ``scores`` (n,) by their segment ``labels`` (n,); a segment with fewer than
        ``min_calibration_rows(alpha)`` rows is kept in ``small`` (scored against the pooled scores)."""
        need = min_calibration_rows(alpha)
        values, calibration, small = [], [], {}
        for v in sorted(set(labels.tolist())):
            s = np.sort(np.asarray(scores[labels == v], dtype=np.float64))
            if len(s) >= need:
                values.append(v)
                calibration.append(s)
            else:
                small[v] = len(s)
        return cls(column, values, calibration, small)

    def codes(self, labels: np.ndarray) -> np.ndarray:
        """(n,) int: each label's position in ``values``, ``POOLED`` for a small or unseen segment."""
        index = {v: i for i, v in enumerate(self.values)}
        return np.fromiter((index.get(v, POOLED) for v in labels), dtype=np.int64, count=len(labels))

    def thresholds(self, level: float) -> list[float | None]:
        """Each segment's split-conformal threshold at ``level`` (None where it has too few rows for it)."""
        need = min_calibration_rows(level)
        return [conformal_threshold(c, level) if len(c) >= need else None for c in self.calibration]

    def calibration_rows(self) -> dict[str, int]:
        """Each segment with its own threshold, and its number of calibration rows."""
        return {v: len(c) for v, c in zip(self.values, self.calibration, strict=True)}

    def to_dict(self) -> dict[str, object]:
        return {"column": self.column, "values": self.values, "small": self.small}

    @classmethod
    def from_dict(cls, d: dict[str, object], calibration: Sequence[np.ndarray]) -> Segments:
        values = [str(v) for v in d["values"]]  # type: ignore[attr-defined]
        small = {str(k): int(v) for k, v in d["small"].items()}  # type: ignore[attr-defined]
        return cls(str(d["column"]), values, [np.asarray(c, dtype=np.float64) for c in calibration], small)
