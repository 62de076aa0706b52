"""Threshold calibration on held-out normal rows (split-conformal).

With n calibration scores s_1..s_n from normal rows never used in training, the threshold
for a target false-positive rate alpha is the k-th smallest score, k = ceil((n + 1)(1 - alpha)).
A new normal row, exchangeable with the calibration rows, then exceeds it with probability
(n + 1 - k) / (n + 1) <= alpha. A row is flagged when its score is strictly above the threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.errors import InputError


def min_calibration_rows(alpha: float) -> int:
    """Smallest n for which alpha is attainable: ceil((n + 1)(1 - alpha)) <= n."""
    return max(math.ceil(1.0 / alpha) - 1, 1)


def check_alpha(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha (target false-positive rate) must be in (0, 1), got {alpha!r}")
    return alpha


def conformal_threshold(calibration_scores: np.ndarray, alpha: float) -> float:
    """Score threshold whose false-positive rate on normal data is at most ``alpha``.

    Args:
        calibration_scores: (n_cal,) scores of held-out normal rows.
        alpha: target false-positive rate in (0, 1).

    Raises:
        InputError: alpha out of range, or too few calibration rows for it.
    """
    check_alpha(alpha)
    s = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    n = len(s)
    need = min_calibration_rows(alpha)
    if n < need:
        raise InputError(
            f"alpha={alpha} needs at least {need} calibration rows, got {n}: use more training rows or a larger alpha"
        )
    # The small tolerance keeps k exact when alpha is itself a p-value j / (n + 1).
    k = max(math.ceil((n + 1) * (1.0 - alpha) - 1e-9), 1)
    return float(s[k - 1])


def exceedance_count(m: int, n_cal: int, j: int) -> Any:
    """Distribution of how many of ``m`` new normal rows score above the j-th largest of ``n_cal`` calibration scores.

    One calibration set fixes the threshold, so the rate at which new normal rows exceed it is not a constant
    but Beta(j, n_cal + 1 - j) (mean j / (n_cal + 1)), and all m rows share it: the count is beta-binomial,
    wider than any binomial. The conformal threshold for alpha is the j-th largest with
    j = n_cal + 1 - ceil((n_cal + 1)(1 - alpha)); ``p_value <= level`` means above the j-th largest with
    j = floor(level (n_cal + 1)). Returns a frozen scipy ``betabinom``.

    Raises:
        ValueError: j outside [1, n_cal].
    """
    from scipy.stats import betabinom

    if not 1 <= j <= n_cal:
        raise ValueError(f"j must be in [1, n_cal={n_cal}], got {j}")
    return betabinom(m, j, n_cal + 1 - j)


def p_values(scores: np.ndarray, calibration_scores: np.ndarray) -> np.ndarray:
    """Conformal p-values (1 + #{cal >= score}) / (n_cal + 1), (n,)."""
    cal = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    n_ge = len(cal) - np.searchsorted(cal, np.asarray(scores, dtype=np.float64), side="left")
    return (1.0 + n_ge) / (len(cal) + 1.0)
