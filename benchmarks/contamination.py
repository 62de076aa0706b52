"""Training on contaminated data: the plain ELBO against the trimmed ELBO (TrainConfig.trim_fraction).

    python -m benchmarks.contamination [--contamination 0.05] [--datasets ...] [--seeds 3] [--out FILE.csv]

Protocol: the ``benchmarks.tabular`` split per dataset and seed, then anomalies taken from the test
set are added to the training pool until they are ``--contamination`` of it (at most half of the
anomalies, so the test set keeps some). The detector is trained on that pool with trim 0 and with
trim = the contamination; both are scored on the same test set (AUROC), and their thresholds'
false-positive rate on the test normals is reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.protocol import add_protocol_arguments, run_datasets, split


def contaminated_split(y: np.ndarray, seed: int, rate: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Training rows (normal pool + moved anomalies), test rows, and how many anomalies were moved."""
    pool, test, y_test = split(y, seed)
    anomalies = test[y_test == 1]
    n_move = min(round(rate / (1.0 - rate) * len(pool)), len(anomalies) // 2)
    moved = np.random.default_rng(seed).permutation(anomalies)[:n_move]
    return np.concatenate([pool, moved]), np.setdiff1d(test, moved), n_move


def run(x: np.ndarray, y: np.ndarray, seed: int, rate: float, trim: float, alpha: float) -> dict[str, Any]:
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from pipeline.detect.detector import VAEAnomalyDetector
    from vae.config import TrainConfig

    train_idx, test_idx, n_move = contaminated_split(y, seed, rate)
    cols = [f"x{j}" for j in range(x.shape[1])]
    t0 = time.perf_counter()
    det = VAEAnomalyDetector(alpha=alpha, seed=seed, train_config=TrainConfig(seed=seed, trim_fraction=trim))
    det.fit(pd.DataFrame(x[train_idx], columns=cols))
    s = det.score_samples(pd.DataFrame(x[test_idx], columns=cols))
    yt = y[test_idx]
    return {
        "seed": seed,
        "trim": trim,
        "moved_anomalies": n_move,
        "n_train": len(train_idx),
        "auroc": float(roc_auc_score(yt, s)),
        "threshold_fpr": float((s[yt == 0] > det.threshold_).mean()),
        "fit_s": time.perf_counter() - t0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.contamination", description=__doc__.split("\n")[0])
    p.add_argument("--contamination", type=float, default=0.05)
    p.add_argument("--datasets", nargs="*", default=None)
    add_protocol_arguments(p, Path("benchmarks/results/contamination.csv"))
    args = p.parse_args(argv)

    def trials(x: np.ndarray, y: np.ndarray) -> Iterator[dict[str, Any]]:
        for seed in range(args.seeds):
            for trim in (0.0, args.contamination):
                yield run(x, y, seed, args.contamination, trim, args.alpha)

    df = run_datasets(
        args,
        trials,
        lambda r: (
            f"{r['dataset']:12s} seed={r['seed']} trim={r['trim']:.2f} moved={r['moved_anomalies']} "
            f"auroc={r['auroc']:.4f} fpr={r['threshold_fpr']:.3f} fit={r['fit_s']:.1f}s"
        ),
    )
    table = df.groupby(["dataset", "trim"])["auroc"].mean().unstack("trim")
    table.columns = [f"trim={c:g}" for c in table.columns]
    print(table.round(4).to_string())
    print("mean AUROC:", table.mean().round(4).to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
