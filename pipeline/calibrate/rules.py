"""Flag rules users can state as an error rate (Bates, Candès, Lei, Romano & Sesia 2023).

Every rule works on conformal p-values p = (1 + #{cal >= score}) / (n_cal + 1) and reduces to
flagging ``p <= level`` for an effective level; the score threshold it implies is the
split-conformal threshold at that level, so ``is_anomaly == (score > threshold)`` always holds.

- ``alpha``: flag p <= alpha. Marginal guarantee: a normal row is flagged with probability <= alpha.
- ``fdr``: Benjamini-Hochberg at level Q over the batch; the q-value of a row is the smallest
  level at which BH would flag it. Conformal p-values are PRDS, so FDR <= Q (Bates et al., Thm 3).
- ``conditional``: calibration-conditional p-values via the DKW inequality: with probability
  >= 1 - delta over the calibration set, sup_t |F_n(t) - F(t)| <= eps = sqrt(log(2 / delta) / (2 n)),
  so p_cc = min(1, p + eps) is a valid p-value *for this calibration set*; flag p_cc <= alpha,
  i.e. p <= alpha - eps. (Two-sided DKW with Massart's constant: conservative.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.calibrate.conformal import check_alpha, conformal_threshold, min_calibration_rows, p_values
from pipeline.errors import InputError

RULES = ("alpha", "fdr", "conditional")


def dkw_epsilon(n_cal: int, delta: float) -> float:
    """eps with P(sup |F_n - F| > eps) <= delta for n_cal calibration scores."""
    return math.sqrt(math.log(2.0 / delta) / (2.0 * n_cal))


def bh_q_values(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), (m,): q_(i) = min_{j >= i} m p_(j) / j, capped at 1."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    q = np.empty(m)
    q[order] = q_sorted
    return q


@dataclass(frozen=True)
class FlagRule:
    """How rows are flagged: ``kind`` in RULES at ``level`` (alpha or Q), ``delta`` for conditional."""

    kind: str
    level: float
    delta: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise InputError(f"flag rule must be one of {RULES}, got {self.kind!r}")
        if not 0.0 < self.level < 1.0:
            raise InputError(f"{'fdr' if self.kind == 'fdr' else 'alpha'} must be in (0, 1), got {self.level!r}")
        if self.kind == "conditional" and not (self.delta is not None and 0.0 < self.delta < 1.0):
            raise InputError(f"conditional needs delta in (0, 1), got {self.delta!r}")

    def describe(self) -> str:
        if self.kind == "alpha":
            return f"p <= {self.level} (marginal false-positive rate <= {self.level})"
        if self.kind == "fdr":
            return f"Benjamini-Hochberg at {self.level} (false discovery rate <= {self.level})"
        return (
            f"calibration-conditional p <= {self.level} (false-positive rate <= {self.level} "
            f"with probability >= {1 - (self.delta or 0):.3g} over the calibration set; DKW)"
        )


@dataclass(frozen=True)
class Flags:
    """The outcome of a rule on a batch: per-row arrays and the threshold in score units."""

    p_value: np.ndarray
    q_value: np.ndarray | None
    is_anomaly: np.ndarray
    threshold: float
    effective_level: float


def min_rows_conditional(alpha: float, delta: float) -> int:
    """Smallest n_cal for which alpha - eps(n_cal, delta) >= 1 / (n_cal + 1)."""
    n = 1
    while alpha - dkw_epsilon(n, delta) < 1.0 / (n + 1):
        n = n * 2 if n < 1 << 30 else n + 1
    lo, hi = n // 2, n
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if alpha - dkw_epsilon(mid, delta) >= 1.0 / (mid + 1) else (mid, hi)
    return hi


def apply_rule(rule: FlagRule, scores: np.ndarray, calibration_scores: np.ndarray) -> Flags:
    """Flag the batch ``scores`` (m,) against ``calibration_scores`` (n,) with ``rule``.

    Raises:
        InputError: the calibration set is too small for the asked level (says how many rows are needed).
    """
    cal = np.asarray(calibration_scores, dtype=np.float64)
    n = len(cal)
    p = p_values(scores, cal)
    q = None
    if rule.kind == "alpha":
        check_alpha(rule.level)
        level = rule.level
        if n < min_calibration_rows(level):
            raise InputError(
                f"alpha={level} needs at least {min_calibration_rows(level)} calibration rows "
                f"(alpha >= 1/(n_cal+1)); this model has {n}"
            )
    elif rule.kind == "conditional":
        assert rule.delta is not None
        level = rule.level - dkw_epsilon(n, rule.delta)
        if level < 1.0 / (n + 1):
            need = min_rows_conditional(rule.level, rule.delta)
            raise InputError(
                f"a calibration-conditional alpha={rule.level} at delta={rule.delta} needs at least "
                f"{need} calibration rows; this model has {n}"
            )
    else:
        q = bh_q_values(p)
        rejected = q <= rule.level
        # BH flags every p-value up to the largest p_(k) <= kQ/m: a marginal rule at that level.
        level = float(p[rejected].max()) if rejected.any() else 0.0
    flagged = p <= level
    threshold = conformal_threshold(cal, level) if level >= 1.0 / (n + 1) else math.inf
    return Flags(p, q, flagged.astype(np.int64), threshold, level)
