"""Threshold health of a scored batch: is it still like the calibration data?

Two tests, reported on every batch:
- the flagged count (rows with conformal p-value <= level) against what the model's own calibration
  predicts: a two-sided test (:func:`flag_count_pvalue`); far more flags than expected means the batch
  holds anomalies or has shifted, far fewer that the threshold has become conservative on it;
- a two-sample Kolmogorov-Smirnov test of the batch's scores against the calibration scores.
A plain warning is raised when either p-value falls below ``warn_below`` (0.01). To tell a batch that holds
many anomalies from one that has shifted, a third KS test compares the batch's scores at or below the
model's threshold (the rows it does not flag) with the calibration scores at or below it: anomalies add
scores above the threshold and leave that part alike; a shift moves it too. Only when that part differs, or
cannot be tested, does the warning say "recalibrate or retrain".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from pipeline.calibrate.conformal import exceedance_count

WARN_BELOW = 0.01
EXACT_MAX_N = 10_000  # scipy's ks_2samp computes exact p-values up to this sample size ("auto")
BLOCK = 65_536  # batch scores sorted at a time by the large-batch KS statistic


class KSResult(NamedTuple):
    statistic: float
    pvalue: float


class KSCounter:
    """What the two-sample KS test of a batch against ``reference`` needs, counted block by block.

    The empirical CDFs are step functions, so their largest gap sits at a reference value, on it or
    just below it: only the batch's counts below and at each distinct reference value are needed
    (plus, for a batch small enough for scipy's exact p-value, the batch itself, at most
    ``EXACT_MAX_N`` values). A streamed file adds its chunks' scores as they come and keeps none.
    """

    def __init__(self, reference: np.ndarray) -> None:
        self.reference = np.sort(np.asarray(reference, dtype=np.float64))
        self.values = np.unique(self.reference)
        self.below = np.zeros(len(self.values), dtype=np.int64)
        self.at_most = np.zeros(len(self.values), dtype=np.int64)
        self.n = 0
        self._small: list[np.ndarray] = []

    @classmethod
    def of(cls, batch: np.ndarray | Sequence[np.ndarray], reference: np.ndarray) -> KSCounter:
        """The counts of ``batch``: one array, or a sequence of arrays added one by one (never joined)."""
        counter = cls(reference)
        for part in [batch] if isinstance(batch, np.ndarray) else batch:
            counter.add(part)
        return counter

    def add(self, scores: np.ndarray) -> None:
        part = np.asarray(scores, dtype=np.float64)
        if self.n <= EXACT_MAX_N:
            self._small.append(part[: EXACT_MAX_N + 1 - self.n].copy())
        for start in range(0, len(part), BLOCK):
            block = np.sort(part[start : start + BLOCK])
            self.below += np.searchsorted(block, self.values, side="left")
            self.at_most += np.searchsorted(block, self.values, side="right")
        self.n += len(part)
        if self.n > EXACT_MAX_N:
            self._small = []

    def result(self) -> KSResult:
        """Equal to ``scipy.stats.ks_2samp(batch, reference)`` (method ``auto``): that very call while both
        samples have at most ``EXACT_MAX_N`` values (exact p-value); above, the same statistic from the
        counts and scipy's asymptotic p-value, ``kstwo.sf(D, round(n m / (n + m)))``."""
        from scipy.stats import distributions, ks_2samp

        n, m = self.n, len(self.reference)
        if max(n, m) <= EXACT_MAX_N:
            r = ks_2samp(np.concatenate(self._small) if self._small else np.zeros(0), self.reference)
            return KSResult(float(r.statistic), float(r.pvalue))
        ref_below = np.searchsorted(self.reference, self.values, side="left") / m
        ref_at_most = np.searchsorted(self.reference, self.values, side="right") / m
        d = float(max(np.max(np.abs(self.at_most / n - ref_at_most)), np.max(np.abs(self.below / n - ref_below))))
        big, small = sorted([float(n), float(m)], reverse=True)
        p = float(np.clip(distributions.kstwo.sf(d, np.round(big * small / (big + small))), 0.0, 1.0))
        return KSResult(d, p)


def ks_test(batch: np.ndarray | Sequence[np.ndarray], reference: np.ndarray) -> KSResult:
    """Two-sided two-sample Kolmogorov-Smirnov test of ``batch`` against ``reference`` (calibration scores).

    ``batch`` is one array or a sequence of arrays (never joined). Equal to
    ``scipy.stats.ks_2samp(batch, reference)``, without scipy's sorted copy of the whole batch and
    of both samples joined (about 230 MB more for 10 M scores): see :class:`KSCounter`.
    """
    return KSCounter.of(batch, reference).result()


@dataclass(frozen=True)
class BatchHealth:
    rows: int
    flagged: int
    expected_rate: float
    flagged_rate: float
    binomial_pvalue: float  # the flag-count test's p-value (flag_count_pvalue; the name is kept for readers)
    ks_statistic: float
    ks_pvalue: float
    warning: str
    unflagged_ks_pvalue: float | None = None  # KS of the scores at or below the threshold; None: too few

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def flag_count_pvalue(flagged: int, m: int, level: float, n_cal: int) -> float:
    """Two-sided p-value of ``flagged`` rows of ``m`` having a conformal p-value <= ``level``.

    Against n calibration scores, p <= level means a score above the j-th largest calibration score,
    j = floor(level (n + 1)). For one calibration set that happens with probability Beta(j, n + 1 - j), not
    exactly level, and every row of the batch shares it: the count is beta-binomial
    (:func:`pipeline.calibrate.conformal.exceedance_count`), much wider than
    Binomial(m, level) once m is large against n. (A binomial test, blind to this, warns on most large
    batches of a well-calibrated model: its rate is off level by about sqrt(level / n) for good.) The
    two-sided p-value is twice the smaller tail, at most 1. Without calibration scores (n = 0), or a level
    that no p-value can reach (j = 0), it is the exact binomial test.
    """
    from scipy.stats import binomtest

    if m <= 0 or not 0.0 < level < 1.0:
        return 1.0
    j = int(np.floor(level * (n_cal + 1) + 1e-9))
    if n_cal <= 0 or not 1 <= j <= n_cal:
        return float(binomtest(flagged, m, level).pvalue)
    count = exceedance_count(m, n_cal, j)
    return min(1.0, 2.0 * min(float(count.cdf(flagged)), float(count.sf(flagged - 1))))


MIN_UNFLAGGED = 20  # rows at or below the threshold that the unflagged part's KS test needs


def unflagged_counter(calibration_scores: np.ndarray, threshold: float) -> KSCounter:
    """A :class:`KSCounter` for a batch's scores at or below ``threshold``; add them with :func:`add_unflagged`."""
    cal = np.asarray(calibration_scores, dtype=np.float64)
    return KSCounter(cal[cal <= threshold])


def add_unflagged(counter: KSCounter, scores: np.ndarray, threshold: float) -> None:
    counter.add(scores[scores <= threshold])


def batch_health(
    scores: np.ndarray | Sequence[np.ndarray] | KSCounter,
    calibration_scores: np.ndarray,
    flagged: int,
    expected_rate: float,
    warn_below: float = WARN_BELOW,
    unit: str = "rows",
    unflagged: KSCounter | None = None,
    threshold: float | None = None,
) -> BatchHealth:
    """Compare a batch's flag count and score distribution with what calibration predicts.

    ``scores``: one array, a streamed file's chunks (see :func:`ks_test`), or a :class:`KSCounter` of
    the batch against these calibration scores. ``unflagged``: the counts of the batch's scores at or below
    the model's threshold (:func:`unflagged_counter`); for arrays, ``threshold`` builds it here instead.
    ``unit``: what a batch holds, in messages ("rows", "images").
    """
    counter = scores if isinstance(scores, KSCounter) else KSCounter.of(scores, calibration_scores)
    if unflagged is None and threshold is not None and not isinstance(scores, KSCounter):
        unflagged = unflagged_counter(calibration_scores, threshold)
        for part in [scores] if isinstance(scores, np.ndarray) else scores:
            add_unflagged(unflagged, np.asarray(part, dtype=np.float64), threshold)
    m = counter.n
    if m == 0:
        return BatchHealth(0, 0, expected_rate, 0.0, 1.0, 0.0, 1.0, "")
    rate = min(max(expected_rate, 0.0), 1.0)
    binom_p = flag_count_pvalue(int(flagged), m, rate, len(calibration_scores))
    ks = counter.result()
    rest = (
        unflagged.result()
        if unflagged is not None and min(unflagged.n, len(unflagged.reference)) >= MIN_UNFLAGGED
        else None
    )
    excess = (
        f"flagged {flagged} of {m} {unit} ({flagged / m:.2%}) where about {rate:.2%} was expected (p={binom_p:.2g})"
    )
    many = binom_p < warn_below and flagged > m * rate
    if (ks.pvalue < warn_below or many) and rest is not None and rest.pvalue >= warn_below and many:
        warning = (
            f"{excess}: this batch holds many anomalies; the {unit} it does not flag score like the "
            f"calibration data (KS p={rest.pvalue:.2g}), so it has not shifted: review the flagged {unit}"
        )
    elif ks.pvalue < warn_below:
        below = "" if rest is None else f", and so do the {unit} it does not flag (KS p={rest.pvalue:.2g})"
        warning = (
            f"batch looks shifted from the training data: its scores differ from the calibration scores "
            f"(KS={ks.statistic:.3f}, p={ks.pvalue:.2g}){below}"
            + (f"; {excess}" if binom_p < warn_below else "")
            + ": recalibrate or retrain"
        )
    elif many:
        # The bulk of the scores still matches calibration, and the unflagged part could not be tested.
        warning = (
            f"{excess}: this batch holds more anomalies than the false-positive rate explains; if most "
            f"flagged {unit} look normal, it has shifted: recalibrate or retrain"
        )
    elif binom_p < warn_below:
        warning = (
            f"{excess}: fewer rows than the false-positive rate predicts score high, so the threshold is "
            "more conservative on this batch than calibrated (fewer false alarms, possibly missed "
            "anomalies); if this persists, recalibrate"
        )
    else:
        warning = ""
    return BatchHealth(
        m,
        int(flagged),
        rate,
        flagged / m,
        binom_p,
        float(ks.statistic),
        float(ks.pvalue),
        warning,
        None if rest is None else float(rest.pvalue),
    )
