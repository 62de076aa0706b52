"""Scoring one input file into a report and its summary (no orchestration)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.attribution import attribution_columns
from pipeline.detector import VAEAnomalyDetector
from pipeline.errors import InputError
from pipeline.health import batch_health
from pipeline.io import read_table, sha256_file
from pipeline.metrics import f1_optimal_threshold, labelled_metrics, labels_from
from pipeline.report import build_report, neutralise_cell, report_path, write_csv_atomic, write_text_atomic
from pipeline.rules import FlagRule, apply_rule
from pipeline.schema import most_extreme


@dataclass(frozen=True)
class FileSummary:
    """What one scored file produced; ``flagged + not flagged == rows``."""

    input: str
    report: str
    rows: int
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


def score_file(
    det: VAEAnomalyDetector, path: str | Path, out_dir: str | Path,
    model_uri: str = "", model_name: str | None = None, model_version: str | None = None,
    rule: FlagRule | None = None, label_column: str | None = None, f1_optimal: bool = False,
) -> FileSummary:
    """Score every row of ``path`` and write ``<out_dir>/<stem>.anomalies.csv`` atomically.

    Args:
        rule: how rows are flagged; default: p <= the model's alpha (its calibrated threshold).
        label_column: a 0/1 column (1 = anomaly) of the input, for precision/recall/F1/AUROC/AUPRC;
            defaults to the model's label column when the input has it.
        f1_optimal: with labels that include anomalies, flag at the F1-optimal threshold instead.

    Raises:
        InputError: unreadable file, schema mismatch (names column and row), a score that overflows,
            bad labels or level, or unwritable output.
    """
    t0 = time.perf_counter()
    p = Path(path)
    rule = rule or FlagRule("alpha", det.alpha)
    target = report_path(out_dir, p)
    ensure_out_dir(target.parent)
    df = read_table(p, str_columns=det.schema_.id_columns)
    digest = sha256_file(p)
    features = det.schema_.validate(df, source=str(p))
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected by check_finite, row by row
        scores, explanation = det.score_and_explain(features)
    check_finite(det, features, scores, str(p))
    flags = apply_rule(rule, scores, det.calibration_scores_)
    is_anomaly, threshold, notes = flags.is_anomaly, flags.threshold, []
    label = label_column or (det.schema_.label_column if det.schema_.label_column in df.columns else None)
    y = None
    if label:
        if label not in df.columns:
            raise InputError(f"{p}: label column {label!r} not found")
        y = labels_from(df[label].to_numpy(), label)
    if f1_optimal:
        t = f1_optimal_threshold(y, scores) if y is not None else None
        if t is None:
            notes.append("no labelled anomalies in this batch: kept the false-positive-rate rule "
                         "(an F1-optimal threshold needs labelled anomalies)")
        else:
            threshold, is_anomaly = t, (scores > t).astype(np.int64)
            notes.append(f"flagged at the F1-optimal threshold {t:.6g} found on this batch's labels")
    metrics = labelled_metrics(y, scores, is_anomaly) if y is not None else None
    if metrics is not None and metrics["n_labelled_anomalies"] == 0:
        notes.append("no labelled anomalies in this batch: recall, F1 and AUROC are undefined")
    report = build_report(df, scores, threshold, det.schema_.id_columns, is_anomaly, flags.p_value, flags.q_value)
    attribution = attribution_columns(det, df, explanation)
    for c in attribution.columns:
        report[c] = attribution[c].map(neutralise_cell).to_numpy()
    try:
        write_csv_atomic(report, target)
    except OSError as e:
        raise InputError(f"cannot write report {target}: {e.strerror or e}") from e
    flagged = int(report["is_anomaly"].sum())
    # Health asks whether the calibration still holds, whatever the flag rule: rows with p <= level
    # against Binomial(rows, level), at the rule's level (the model's alpha for BH, whose own flag
    # count has no fixed expected rate).
    level = det.alpha if rule.kind == "fdr" else flags.effective_level
    health = batch_health(scores, det.calibration_scores_, int((flags.p_value <= level).sum()), level)
    if health.warning:
        notes.append(health.warning)
    return FileSummary(
        input=str(p), report=str(target), rows=len(report), flagged=flagged,
        flagged_fraction=flagged / len(report) if len(report) else 0.0,
        threshold=float(threshold), rule=rule.describe(), alpha=det.alpha, input_sha256=digest,
        model_uri=model_uri, model_name=model_name, model_version=model_version,
        auroc=metrics["auroc"] if metrics else None, seconds=time.perf_counter() - t0,
        health=health.to_dict(), metrics=metrics, notes=notes,
    )


def score_features(det: VAEAnomalyDetector, features: pd.DataFrame, source: str = "input") -> np.ndarray:
    """(n,) scores of validated ``features``; every score is finite.

    Raises:
        InputError: a row's score overflows (a value far outside the training range, e.g. 1e308):
            names the row, the column and the value.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected by check_finite, row by row
        scores = det.score_validated(features)
    check_finite(det, features, scores, source)
    return scores


def check_finite(det: VAEAnomalyDetector, features: pd.DataFrame, scores: np.ndarray, source: str) -> None:
    """Raise InputError naming the first row whose score overflowed, its column and value."""
    bad = ~np.isfinite(scores)
    if bad.any():
        i = int(np.argmax(bad))
        pre = det.preprocessor_
        where = most_extreme(features.iloc[[i]], det.schema_.numeric, pre.mean_, pre.std_)
        why = (f"column {where[0]!r} holds {where[2]!r}, {where[3]:.3g} training standard deviations from the "
               f"training mean" if where else "its values are outside what the model can score")
        raise InputError(f"{source}: row {i} cannot be scored, its score overflows: {why}; "
                         "remove or cap such values")


def ensure_out_dir(path: str | Path) -> Path:
    """Create the report folder if needed.

    Raises:
        InputError: it cannot be created, or is not a writable folder.
    """
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise InputError(f"output folder {d} exists and is not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {d}: {e.strerror or e}") from e
    if not os.access(d, os.W_OK | os.X_OK):
        raise InputError(f"output folder {d} is not writable")
    return d


def write_summary(summary: FileSummary, path: str | Path) -> Path:
    """The summary as JSON (``<stem>.summary.json`` beside the report)."""
    return write_text_atomic(json.dumps(summary.to_dict(), indent=1, default=str), path)
