"""Errors of a scoring run that name the row: a score that overflows, row numbers counted over the whole file."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from pipeline.data.schema import most_extreme
from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.errors import InputError

_ROW = re.compile(r"\brow (\d+)\b")


def at_row(e: InputError, offset: int, source: str = "") -> InputError:
    """``e`` with its first ``row N`` (after the file name) counted from the start of the file."""
    if offset == 0:
        return e
    text = str(e)
    head = source if source and text.startswith(source) else ""
    tail = _ROW.sub(lambda m: f"row {int(m[1]) + offset}", text[len(head) :], count=1)
    return type(e)(head + tail)


def check_finite(
    det: VAEAnomalyDetector, features: pd.DataFrame, scores: np.ndarray, source: str, offset: int = 0
) -> None:
    """Raise InputError naming the first row whose score overflowed (counted from ``offset``), its column and value."""
    bad = ~np.isfinite(scores)
    if bad.any():
        i = int(np.argmax(bad))
        pre = det.preprocessor_
        where = most_extreme(features.iloc[[i]], det.schema_.numeric, pre.mean_, pre.std_)
        why = (
            f"column {where[0]!r} holds {where[2]!r}, {where[3]:.3g} training standard deviations from the "
            f"training mean"
            if where
            else "its values are outside what the model can score"
        )
        raise InputError(
            f"{source}: row {i + offset} cannot be scored, its score overflows: {why}; remove or cap such values"
        )
