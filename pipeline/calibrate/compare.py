"""Champion / challenger: evaluate two detectors on the same held-out rows and decide whether to promote.

The rule (``decide``), in the order it is applied:

1. No champion yet: the challenger is promoted.
2. Guard: a challenger whose own calibrated threshold flags significantly more held-out normal rows than its
   alpha promises (one-sided beta-binomial test, :func:`fpr_pvalue`, p < ``level``) is never promoted.
3. With labels (held-out anomalies and normal rows): promote when the challenger ranks anomalies better,
   ``AUROC_challenger >= AUROC_champion + margin``; or when it ranks them about as well
   (``AUROC_challenger >= AUROC_champion - margin``) and the champion's threshold is broken on the new data
   (step 4's test).
4. Without labels: promote only when the champion's threshold is broken on the new normal data: it flags
   significantly more held-out normal rows than its alpha (p < ``level``), and the challenger flags
   fewer. A champion that still keeps its false-positive promise is kept: without labels nothing shows that a
   new model detects anomalies better, and changing models has a cost.

Mean held-out negative ELBO is not used: each model standardises the data with its own training statistics,
so their likelihoods are densities in different units and not comparable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.calibrate.conformal import exceedance_count
from pipeline.calibrate.metrics import labels_from
from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.errors import InputError

MIN_HOLDOUT_NORMAL = 20
DEFAULT_MARGIN = 0.01
DEFAULT_LEVEL = 0.01


def holdout_split(
    df: pd.DataFrame, label_column: str | None, fraction: float, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split new data into (rows to train the challenger on, held-out rows both models are evaluated on).

    The held-out rows are a seeded ``fraction`` of the normal rows, plus every labelled anomaly: the detector
    never trains on labelled anomalies, so none is lost to training. Both parts keep the input's row order.

    Raises:
        InputError: ``fraction`` out of (0, 1), bad labels, or fewer than ``MIN_HOLDOUT_NORMAL`` held-out
            normal rows.
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"holdout fraction must be in (0, 1), got {fraction!r}")
    n = len(df)
    anomalous = np.zeros(n, dtype=bool)
    if label_column:
        if label_column not in df.columns:
            raise InputError(f"label column {label_column!r} not found; the data has {list(df.columns)}")
        anomalous = labels_from(df[label_column].to_numpy(), label_column) == 1
    normal = np.flatnonzero(~anomalous)
    k = round(len(normal) * fraction)
    if k < MIN_HOLDOUT_NORMAL:
        raise InputError(
            f"holding out {fraction:.0%} of {len(normal)} normal rows leaves {k} to compare the models "
            f"on, fewer than {MIN_HOLDOUT_NORMAL}: give more rows or raise the holdout fraction"
        )
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).choice(normal, size=k, replace=False)] = True
    held |= anomalous
    return df.iloc[np.flatnonzero(~held)], df.iloc[np.flatnonzero(held)]


@dataclass(frozen=True)
class Evaluation:
    """One model on the held-out rows, at its own calibrated threshold.

    ``fpr_pvalue`` is the one-sided P(X >= false_positives) under the model's own calibration (see
    :func:`fpr_pvalue`): small when the threshold flags more normal rows than the model's alpha promises.
    """

    alpha: float
    threshold: float
    n_normal: int
    false_positives: int
    fpr: float
    fpr_pvalue: float
    n_anomalies: int
    auroc: float | None
    auprc: float | None
    recall: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    det: VAEAnomalyDetector, holdout: pd.DataFrame, label_column: str | None = None, source: str = "held-out rows"
) -> Evaluation:
    """Score ``holdout`` with ``det``; its false-positive rate on normal rows and, with labels, AUROC and AUPRC.

    Raises:
        InputError: the rows do not match the model's schema, or bad labels.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.zeros(len(holdout), dtype=np.int64)
    features = holdout
    if label_column:
        y = labels_from(holdout[label_column].to_numpy(), label_column)
        features = holdout.drop(columns=[label_column])
    scores = det.score_samples(features, source=source)
    flagged = scores > det.threshold_
    n_normal, n_anom = int((y == 0).sum()), int((y == 1).sum())
    fp = int((flagged & (y == 0)).sum())
    both = n_normal > 0 and n_anom > 0
    return Evaluation(
        alpha=float(det.alpha),
        threshold=float(det.threshold_),
        n_normal=n_normal,
        false_positives=fp,
        fpr=fp / n_normal if n_normal else 0.0,
        fpr_pvalue=fpr_pvalue(fp, n_normal, det.alpha, det.calibration_scores_, det.threshold_),
        n_anomalies=n_anom,
        auroc=float(roc_auc_score(y, scores)) if both else None,
        auprc=float(average_precision_score(y, scores)) if both else None,
        recall=float(flagged[y == 1].mean()) if n_anom else None,
    )


def fpr_pvalue(
    false_positives: int, n_normal: int, alpha: float, calibration_scores: np.ndarray | None, threshold: float
) -> float:
    """One-sided P(X >= false_positives): how surprising the flagged normal rows are for a calibrated threshold.

    A conformal threshold is the k-th smallest of n calibration scores, so its false-positive rate on new
    normal rows is not alpha but Beta(n + 1 - k, k) (mean at most alpha), and the flagged count among
    ``n_normal`` rows scored against that one threshold is beta-binomial
    (:func:`pipeline.calibrate.conformal.exceedance_count`), wider than Binomial(n_normal, alpha).
    The binomial test would call a well-calibrated model miscalibrated far more often than its level when
    the calibration set is small (with 80 calibration rows at alpha 0.1, 53 flags of 360 normal rows give
    binomial p = 0.003, beta-binomial p = 0.11). The threshold's rank comes from ``calibration_scores``;
    without them (n = 0) the binomial test is used.
    """
    from scipy.stats import binomtest

    if n_normal <= 0:
        return 1.0
    cal = np.asarray(calibration_scores if calibration_scores is not None else [], dtype=np.float64)
    n = len(cal)
    if n == 0:
        return float(binomtest(false_positives, n_normal, alpha, alternative="greater").pvalue)
    j = min(int((cal > threshold).sum()) + 1, n)  # the threshold is the j-th largest calibration score
    return float(exceedance_count(n_normal, n, j).sf(false_positives - 1))


@dataclass(frozen=True)
class Decision:
    """Whether to move the champion alias to the challenger, by which rule, and why (one line with the numbers)."""

    promote: bool
    rule: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fpr_text(e: Evaluation) -> str:
    return (
        f"flags {e.false_positives} of {e.n_normal} held-out normal rows ({e.fpr:.1%}) at alpha={e.alpha:g} "
        f"(p={e.fpr_pvalue:.2g}, beta-binomial)"
    )


def decide(
    challenger: Evaluation, champion: Evaluation | None, margin: float = DEFAULT_MARGIN, level: float = DEFAULT_LEVEL
) -> Decision:
    """Apply the promotion rule of this module's docstring.

    Args:
        challenger, champion: evaluations on the same held-out rows; ``champion`` None when there is none.
        margin: AUROC difference that counts as better (and, within it, as about as good).
        level: significance level of the false-positive test (:func:`fpr_pvalue`).
    """
    if not 0.0 <= margin < 1.0:
        raise InputError(f"margin must be in [0, 1), got {margin!r}")
    if not 0.0 < level < 1.0:
        raise InputError(f"level must be in (0, 1), got {level!r}")
    if champion is None:
        return Decision(True, "no-champion", "promoted: there is no champion yet")
    if challenger.fpr_pvalue < level:
        return Decision(
            False,
            "challenger-miscalibrated",
            f"kept the champion: the challenger {_fpr_text(challenger)}, more than its alpha promises",
        )
    champion_broken = champion.fpr_pvalue < level
    if challenger.auroc is not None and champion.auroc is not None:
        gain = challenger.auroc - champion.auroc
        aurocs = (
            f"AUROC {challenger.auroc:.4f} (challenger) vs {champion.auroc:.4f} (champion) on "
            f"{challenger.n_anomalies} labelled anomalies and {challenger.n_normal} normal rows"
        )
        if gain >= margin:
            return Decision(True, "labelled-auroc", f"promoted: {aurocs}, better by {gain:+.4f} >= {margin:g}")
        if gain >= -margin and champion_broken:
            return Decision(
                True,
                "labelled-auroc",
                f"promoted: {aurocs}, within {margin:g}, and the champion "
                f"{_fpr_text(champion)}, more than its alpha promises",
            )
        return Decision(
            False,
            "labelled-auroc",
            f"kept the champion: {aurocs}, gain {gain:+.4f} < {margin:g}"
            + ("" if champion_broken else " and the champion's threshold holds"),
        )
    if champion_broken and challenger.fpr < champion.fpr:
        return Decision(
            True,
            "calibration",
            f"promoted: the champion {_fpr_text(champion)}, more than its alpha "
            f"promises; the challenger {_fpr_text(challenger)}",
        )
    if champion_broken:
        return Decision(
            False,
            "calibration",
            f"kept the champion: it {_fpr_text(champion)}, but the challenger {_fpr_text(challenger)}, no fewer",
        )
    return Decision(
        False,
        "calibration",
        f"kept the champion: it {_fpr_text(champion)}, not significantly more "
        f"than its alpha (p >= {level:g}); without labels, a challenger replaces "
        "only a champion whose threshold no longer holds",
    )
