"""Figures written to files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def score_distribution(
    calibration_scores: np.ndarray,
    threshold: float,
    alpha: float,
    path: str | Path,
    other_scores: np.ndarray | None = None,
    other_label: str = "anomalies",
    score_label: str = "anomaly score (higher = more anomalous)",
    calibration_label: str = "calibration (normal",
) -> Path:
    """Histogram of calibration scores with the threshold marked; PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    all_scores = calibration_scores if other_scores is None else np.concatenate([calibration_scores, other_scores])
    lo, hi = np.quantile(all_scores, [0.0, 0.999]) if len(all_scores) else (0.0, 1.0)
    bins = np.linspace(lo, max(hi, threshold) * 1.05 if hi > 0 else hi + 1, 60)
    ax.hist(
        np.clip(calibration_scores, lo, bins[-1]),
        bins=bins,
        alpha=0.7,
        label=f"{calibration_label}, n={len(calibration_scores)})",
    )
    if other_scores is not None and len(other_scores):
        ax.hist(
            np.clip(other_scores, lo, bins[-1]), bins=bins, alpha=0.6, label=f"{other_label} (n={len(other_scores)})"
        )
    ax.axvline(threshold, color="crimson", linestyle="--", label=f"threshold {threshold:.3g} (alpha={alpha})")
    ax.set_xlabel(score_label)
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p)
    plt.close(fig)
    return p
