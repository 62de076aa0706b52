"""Per-feature attribution columns of a report: which features make a row anomalous.

``top_features`` lists up to three features with their share of the row's excess negative
log-likelihood (each feature's -log p(x_j | z = mu(x)) above its median on normal calibration rows),
e.g. ``"bytes_out:61%;port:22%;duration:9%"``; ``top_observed`` is the input's value of the first
of them and ``top_expected`` the model's expectation for it (the decoded mean of a numeric feature,
the most likely category of a categorical one). A row with no excess anywhere gets empty cells.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.detector import Explanation, VAEAnomalyDetector

TOP_K = 3
MIN_SHARE = 0.01


def attribution_columns(det: VAEAnomalyDetector, df: pd.DataFrame, ex: Explanation) -> pd.DataFrame:
    """(n,) frame with ``top_features``, ``top_observed``, ``top_expected`` for the rows of ``df``."""
    names = list(det.schema_.features)
    n_num = len(det.schema_.numeric)
    total = ex.excess.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(total[:, None] > 0, ex.excess / total[:, None], 0.0)
    order = np.argsort(-shares, axis=1, kind="stable")[:, :TOP_K]
    top, observed, expected = [], [], []
    for i in range(len(df)):
        picked = [j for j in order[i] if shares[i, j] >= MIN_SHARE]
        top.append(";".join(f"{names[j]}:{round(100 * shares[i, j])}%" for j in picked))
        if not picked:
            observed.append("")
            expected.append("")
            continue
        j = picked[0]
        observed.append(_text(df[names[j]].iloc[i]))
        if j < n_num:
            expected.append(f"{ex.expected_numeric[i, j]:.6g}")
        else:
            c = j - n_num
            expected.append(det.preprocessor_.vocab_[names[j]][int(ex.likely_codes[c][i])])
    return pd.DataFrame({"top_features": top, "top_observed": observed, "top_expected": expected},
                        index=df.index)


def _text(v: object) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, float | np.floating):
        return f"{float(v):.6g}"
    return str(v)
