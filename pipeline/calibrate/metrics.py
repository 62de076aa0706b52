"""Metrics on labelled batches (1 = anomaly), and an F1-optimal threshold when asked for."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.errors import InputError


def labels_from(values: np.ndarray, name: str) -> np.ndarray:
    """0/1 integer labels; anything else is an error naming the first bad row."""
    y = np.asarray(values)
    yf = pd.to_numeric(pd.Series(y), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(yf, (0.0, 1.0))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"label column {name!r} must hold 0 or 1 (1 = anomaly), row {i} holds {y[i]!r}")
    return yf.astype(np.int64)


def labelled_metrics(y: np.ndarray, scores: np.ndarray, flagged: np.ndarray) -> dict[str, float | int | None]:
    """Precision, recall, F1 at the flags; AUROC and AUPRC of the scores (None without both classes)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y, dtype=np.int64)
    f = np.asarray(flagged, dtype=bool)
    tp = int((f & (y == 1)).sum())
    fp = int((f & (y == 0)).sum())
    fn = int((~f & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    both = len(np.unique(y)) == 2
    return {
        "n_labelled_anomalies": int((y == 1).sum()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_positive_rate": fp / int((y == 0).sum()) if (y == 0).any() else None,
        "auroc": float(roc_auc_score(y, scores)) if both else None,
        "auprc": float(average_precision_score(y, scores)) if both else None,
    }


def f1_optimal_threshold(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Score threshold t (flag score > t) maximising F1 on labelled rows; None without anomalies.

    t lies midway between the lowest flagged score and the highest unflagged one, so no row's score sits
    on it (a report's scores, printed to 9 significant digits, then agree with its flags)."""
    y = np.asarray(y, dtype=np.int64)
    if not (y == 1).any():
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, yy = np.asarray(scores, dtype=np.float64)[order], y[order]
    tp = np.cumsum(yy == 1)
    fp = np.cumsum(yy == 0)
    f1 = 2 * tp / (2 * tp + fp + (tp[-1] - tp))
    # Only cut between distinct scores: flag the top i+1 rows <=> score > next score.
    distinct = np.r_[s[1:] < s[:-1], True]
    i = int(np.argmax(np.where(distinct, f1, -1.0)))
    if i + 1 == len(s):
        return float(np.nextafter(s[i], -np.inf))
    mid = (s[i] + s[i + 1]) / 2
    return float(mid if s[i + 1] <= mid < s[i] else s[i + 1])
