"""Anomaly reports: one CSV row per input row, in input order, written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

REPORT_SUFFIX = ".anomalies.csv"
# OWASP CSV-injection guidance: a cell starting with one of these can run as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def report_path(out_dir: str | Path, input_path: str | Path) -> Path:
    """``<out_dir>/<input stem>.anomalies.csv``."""
    return Path(out_dir) / f"{Path(input_path).stem}{REPORT_SUFFIX}"


def neutralise_cell(v: object) -> object:
    """Prefix a text cell that a spreadsheet would run as a formula with a quote; numbers stay."""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        try:
            float(v)
            return v
        except ValueError:
            return "'" + v
    return v


def build_report(
    df: pd.DataFrame, scores: np.ndarray, threshold: float, id_columns: Sequence[str] = (),
    is_anomaly: np.ndarray | None = None, p_value: np.ndarray | None = None, q_value: np.ndarray | None = None,
) -> pd.DataFrame:
    """The report frame: row, id columns, score, threshold, is_anomaly (0/1), then p_value / q_value if given.

    Args:
        df: the input rows (n,), in input order.
        scores: (n,) anomaly scores, higher = more anomalous.
        threshold: the score threshold of the flag rule.
        is_anomaly: (n,) 0/1 flags; default ``scores > threshold``.
    """
    if len(scores) != len(df):
        raise ValueError(f"got {len(scores)} scores for {len(df)} rows")
    out = pd.DataFrame({"row": np.arange(len(df), dtype=np.int64)})
    for c in id_columns:
        out[c] = df[c].to_numpy(dtype=object)
        out[c] = out[c].map(neutralise_cell)
    out["score"] = np.asarray(scores, dtype=np.float64)
    out["threshold"] = float(threshold)
    flags = (out["score"] > threshold) if is_anomaly is None else np.asarray(is_anomaly)
    out["is_anomaly"] = np.asarray(flags, dtype=np.int64)
    if p_value is not None:
        out["p_value"] = np.asarray(p_value, dtype=np.float64)
    if q_value is not None:
        out["q_value"] = np.asarray(q_value, dtype=np.float64)
    return out


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[TextIO]:
    """Open a temporary file beside ``path``; on success fsync and rename it to ``path``.

    A reader never sees a partial file at ``path``; on failure the temporary file is removed.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_writer(path) as f:
        f.write(text)
    return Path(path)


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as CSV to ``path`` atomically; the bytes depend only on the frame."""
    with atomic_writer(path) as f:
        frame.to_csv(f, index=False, float_format="%.9g", lineterminator="\n")
    return Path(path)
