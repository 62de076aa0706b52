"""Baseline detectors for the tabular benchmark: pyod's VAE, k-nearest-neighbour distance, IsolationForest.

Every baseline is a function ``(x_train, x_test, *, alpha, seed) -> MethodResult``. It sees only the
training pool, and its threshold is the (1 - alpha) quantile of its own training-pool scores
(``numpy.quantile(..., method="higher")``); a row is flagged when its score is strictly above it.
``fit_s`` covers everything done on the training pool (fitting and the training-pool scores that
set the threshold); ``score_s`` covers scoring the test rows. Heavy libraries are imported lazily.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_REFERENCE_ROWS = 50_000
KNN_K = 5


@dataclass
class MethodResult:
    """What one method produced on one split.

    Attributes:
        scores: (n_test,) anomaly scores of the test rows (higher = more anomalous), or None
            when the method could not run (then ``note`` says why).
        threshold: the method's own decision threshold (flag ``score > threshold``).
        fit_s, score_s: wall seconds spent on the training pool and on the test rows.
        note: something a reader of the CSV should know (subsampling, failure); "" otherwise.
        info: extra detail for the progress line only (not written to the CSV).
        calibration: the rule that made the threshold (``split``, ``cross``; ``""`` for a baseline, whose
            threshold is the empirical quantile of its training scores).
    """

    scores: np.ndarray | None
    threshold: float = float("nan")
    fit_s: float = float("nan")
    score_s: float = float("nan")
    note: str = ""
    info: str = ""
    calibration: str = ""


Baseline = Callable[..., MethodResult]


def baseline_threshold(train_scores: np.ndarray, alpha: float) -> float:
    """The (1 - alpha) quantile of the training-pool scores (numpy ``method="higher"``)."""
    return float(np.quantile(np.asarray(train_scores, dtype=np.float64), 1.0 - alpha, method="higher"))


def cap_rows(x: np.ndarray, seed: int, limit: int = MAX_REFERENCE_ROWS) -> tuple[np.ndarray, str]:
    """At most ``limit`` rows of ``x``, drawn without replacement with a generator seeded by ``seed``.

    Returns the rows (in their original order) and a note ("" when nothing was dropped).
    """
    if len(x) <= limit:
        return x, ""
    rng = np.random.default_rng([seed, 50_000])  # independent of the split's default_rng(seed)
    keep = np.sort(rng.choice(len(x), size=limit, replace=False))
    return x[keep], f"training pool subsampled to {limit} of {len(x)} rows (seeded)"


def run_pyod_vae(x_train: np.ndarray, x_test: np.ndarray, *, alpha: float, seed: int) -> MethodResult:
    """``pyod.models.vae.VAE`` with its defaults (only ``random_state=seed``; ``verbose=0`` hides its
    progress bar). Its training-pool scores are the ``decision_scores_`` it computes in ``fit``."""
    from pyod.models.vae import VAE

    t0 = time.perf_counter()
    x_fit, note = cap_rows(x_train, seed)
    model = VAE(random_state=seed, verbose=0)
    model.fit(x_fit)
    threshold = baseline_threshold(model.decision_scores_, alpha)
    t1 = time.perf_counter()
    scores = np.asarray(model.decision_function(x_test), dtype=np.float64)
    t2 = time.perf_counter()
    return MethodResult(scores, threshold, t1 - t0, t2 - t1, note)


def run_knn(x_train: np.ndarray, x_test: np.ndarray, *, alpha: float, seed: int) -> MethodResult:
    """Distance to the 5th nearest training row after a StandardScaler fit on the training pool.

    The training-pool scores behind the threshold leave the row itself out (query k=6, take the last).
    Above 50,000 training rows the reference set is a seeded subsample of 50,000 rows (the scaler is
    still fit on the whole pool), and the threshold comes from that reference set.
    """
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    scaler = StandardScaler().fit(x_train)
    ref, note = cap_rows(scaler.transform(x_train), seed)
    nn = NearestNeighbors(n_neighbors=KNN_K, n_jobs=-1).fit(ref)
    train_dist, _ = nn.kneighbors(ref, n_neighbors=KNN_K + 1)
    threshold = baseline_threshold(train_dist[:, -1], alpha)
    t1 = time.perf_counter()
    test_dist, _ = nn.kneighbors(scaler.transform(x_test), n_neighbors=KNN_K)
    t2 = time.perf_counter()
    return MethodResult(test_dist[:, -1].astype(np.float64), threshold, t1 - t0, t2 - t1, note)


def run_iforest(x_train: np.ndarray, x_test: np.ndarray, *, alpha: float, seed: int) -> MethodResult:
    """scikit-learn IsolationForest with its defaults and ``random_state=seed``; score = -score_samples."""
    from sklearn.ensemble import IsolationForest

    t0 = time.perf_counter()
    model = IsolationForest(random_state=seed).fit(x_train)
    threshold = baseline_threshold(-model.score_samples(x_train), alpha)
    t1 = time.perf_counter()
    scores = -model.score_samples(x_test)
    t2 = time.perf_counter()
    return MethodResult(np.asarray(scores, dtype=np.float64), threshold, t1 - t0, t2 - t1)


BASELINES: dict[str, Baseline] = {
    "pyod-vae": run_pyod_vae,
    "knn": run_knn,
    "iforest": run_iforest,
}
