"""Threshold calibration on normal rows: split-conformal, or cross-conformal over a cross-fitted ensemble.

Split-conformal. With n calibration scores s_1..s_n from normal rows never used in training, the threshold
for a target false-positive rate alpha is the k-th smallest score, k = ceil((n + 1)(1 - alpha)).
A new normal row, exchangeable with the calibration rows, then exceeds it with probability
(n + 1 - k) / (n + 1) <= alpha. A row is flagged when its score is strictly above the threshold.

Cross-conformal (Vovk 2015, "Cross-conformal predictors"; Barber, Candes, Ramdas & Tibshirani 2021,
"Predictive inference with the jackknife+"). The n normal rows are cut into K folds F_1..F_K and member k
is fitted without F_k, so every row has an out-of-fold score z_k(r) from the member that never saw it
and no row is set aside. A new row x is compared, member by member, with the rows that member never saw:

    p(x) = (1 + sum_k #{r in F_k : z_k(r) >= z_k(x)}) / (n + 1).

Flagging p(x) <= alpha keeps the false-positive rate of a normal row at most 2 alpha plus a term of
order 1/n in the worst case (Barber et al. 2021, Theorem 4, for K-fold CV+; the same exchangeability
argument bounds the cross-conformal p-value), and about alpha in practice (Vovk 2015; measured in
BENCHMARKS.md). :func:`cross_conformal_scores` writes p(x) as a split-conformal p-value, so the rules of
:mod:`pipeline.calibrate.rules` apply unchanged: with T(x) = sum_k #{r in F_k : z_k(r) < z_k(x)} (0..n) and the
"calibration scores" 1..n, ``p_values(T(x) + h, 1..n)`` = (1 + n - T(x)) / (n + 1) = p(x) for any h in
(0, 1). The score is T(x) + h(mean_k z_k(x)), h increasing into (0, 1): rows are ranked by how many
out-of-fold normal scores they exceed, then by the ensemble's mean score.
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


# h(mean score) is kept this far inside (0, 1), so T + h never rounds to a neighbouring integer in float64.
_TIE_MARGIN = 1e-9


def cross_conformal_scores(fold_scores: list[np.ndarray], member_scores: np.ndarray) -> np.ndarray:
    """(n,) cross-conformal scores T(x) + h of new rows (see the module docstring).

    Args:
        fold_scores: per member k, the sorted (n_k,) out-of-fold scores z_k(r) of its held-out fold.
        member_scores: (K, n) each member's score z_k(x) of the new rows.

    A row whose mean member score is not finite keeps that value (scoring names such rows).
    """
    z = np.asarray(member_scores, dtype=np.float64)
    if z.ndim != 2 or len(z) != len(fold_scores):
        raise ValueError(f"member_scores must be ({len(fold_scores)}, n), got shape {z.shape}")
    below = np.zeros(z.shape[1])
    for folds, zk in zip(fold_scores, z, strict=True):
        below += np.searchsorted(folds, zk, side="left")  # #{r in F_k : z_k(r) < z_k(x)}
    mean = z.mean(axis=0)
    with np.errstate(invalid="ignore"):
        h = np.clip(0.5 + np.arctan(mean) / np.pi, _TIE_MARGIN, 1.0 - _TIE_MARGIN)
    return np.where(np.isfinite(mean), below + h, mean)


def cross_calibration_scores(n: int) -> np.ndarray:
    """The "calibration scores" 1..n against which :func:`cross_conformal_scores` gives cross-conformal p-values."""
    return np.arange(1, n + 1, dtype=np.float64)
