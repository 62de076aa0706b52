"""Scoring one input file into a report frame and its summary (no orchestration)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.detector import VAEAnomalyDetector
from pipeline.errors import InputError
from pipeline.io import read_table, sha256_file
from pipeline.report import build_report, report_path, write_csv_atomic


@dataclass(frozen=True)
class FileSummary:
    """What one scored file produced; ``flagged + not flagged == rows``."""

    input: str
    report: str
    rows: int
    flagged: int
    flagged_fraction: float
    threshold: float
    alpha: float
    input_sha256: str
    model_uri: str
    model_name: str | None
    model_version: str | None
    auroc: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_file(
    det: VAEAnomalyDetector, path: str | Path, out_dir: str | Path,
    model_uri: str = "", model_name: str | None = None, model_version: str | None = None,
) -> FileSummary:
    """Score every row of ``path`` and write ``<out_dir>/<stem>.anomalies.csv`` atomically.

    Raises:
        InputError: unreadable file, schema mismatch (names column and row), or unwritable output.
    """
    t0 = time.perf_counter()
    p = Path(path)
    digest_before = sha256_file(p) if p.is_file() else ""
    df = read_table(p, str_columns=det.schema_.id_columns)
    features = det.schema_.validate(df, source=str(p))
    scores = det.score_validated(features)
    report = build_report(df, scores, det.threshold_, det.schema_.id_columns)
    target = report_path(out_dir, p)
    try:
        write_csv_atomic(report, target)
    except OSError as e:
        raise InputError(f"cannot write report {target}: {e.strerror or e}") from e
    flagged = int(report["is_anomaly"].sum())
    auroc = _auroc(df, det.schema_.label_column, scores)
    return FileSummary(
        input=str(p), report=str(target), rows=len(report), flagged=flagged,
        flagged_fraction=flagged / len(report) if len(report) else 0.0,
        threshold=det.threshold_, alpha=det.alpha, input_sha256=digest_before,
        model_uri=model_uri, model_name=model_name, model_version=model_version,
        auroc=auroc, seconds=time.perf_counter() - t0,
    )


def _auroc(df: Any, label_column: str | None, scores: np.ndarray) -> float | None:
    if not label_column or label_column not in df.columns:
        return None
    from sklearn.metrics import roc_auc_score

    y = df[label_column].to_numpy()
    if len(np.unique(y[~np.isnan(y.astype(float))])) != 2:
        return None
    return float(roc_auc_score(y, scores))
