"""The tabular benchmarks' protocol: datasets, the seeded split, a method's test metrics, the shared options."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.baselines import MethodResult

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "VAE_ANOMALY_DATA"
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "tabular"
DEFAULT_ALPHA = 0.05
DEFAULT_SEEDS = 3


def default_data_dir() -> Path:
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else DEFAULT_DATA_DIR


def find_datasets(data_dir: Path, names: Sequence[str] | None) -> list[Path]:
    """The ``*.npz`` files of ``data_dir`` (sorted by name), restricted to ``names`` when given."""
    files = {p.stem: p for p in sorted(data_dir.glob("*.npz"))}
    if not files:
        raise FileNotFoundError(f"no *.npz files in {data_dir}")
    if not names:
        return list(files.values())
    missing = [n for n in names if n not in files]
    if missing:
        raise FileNotFoundError(f"dataset(s) {missing} not in {data_dir}; available: {sorted(files)}")
    return [files[n] for n in dict.fromkeys(names)]


def load_dataset(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as d:
        x = np.asarray(d["X"], dtype=np.float64)
        y = np.asarray(d["y"]).astype(np.int64).ravel()
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"{path}: X must be 2-D with one label per row, got X{x.shape} y{y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{path}: y must hold only 0 and 1")
    return x, y


def split(y: np.ndarray, seed: int, max_normal_train: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training-pool rows, test rows and test labels for one seed.

    The normal rows are shuffled with ``default_rng(seed)``; the first half (rounded down) is the
    training pool, the rest of them plus all anomalies form the test set. With ``max_normal_train``, the
    training pool is a seeded sample of at most that many of its rows (the test set is unchanged).
    """
    normal = np.flatnonzero(y == 0)
    perm = np.random.default_rng(seed).permutation(normal)
    n_train = len(perm) // 2
    test = np.concatenate([perm[n_train:], np.flatnonzero(y == 1)])
    train = perm[:n_train]
    if max_normal_train is not None and len(train) > max_normal_train:
        train = np.sort(np.random.default_rng([seed, 3]).choice(train, size=max_normal_train, replace=False))
    return train, test, y[test]


def evaluate(y_test: np.ndarray, res: MethodResult) -> dict[str, Any]:
    """AUROC, AUPRC and the threshold's false-positive rate and recall on the test set."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    nan = float("nan")
    out: dict[str, Any] = {
        "auroc": nan,
        "auprc": nan,
        "threshold_fpr": nan,
        "threshold_recall": nan,
        "fit_s": res.fit_s,
        "score_s": res.score_s,
        "calibration": res.calibration,
        "note": res.note,
    }
    if res.scores is None:
        return out
    s = res.scores
    bad = int((~np.isfinite(s)).sum())
    if bad:
        out["note"] = "; ".join(filter(None, [res.note, f"{bad} non-finite test scores: metrics not computed"]))
        return out
    out["auroc"] = float(roc_auc_score(y_test, s))
    out["auprc"] = float(average_precision_score(y_test, s))
    if math.isfinite(res.threshold):
        flagged = s > res.threshold
        out["threshold_fpr"] = float(flagged[y_test == 0].mean())
        out["threshold_recall"] = float(flagged[y_test == 1].mean())
    return out


def add_protocol_arguments(p: argparse.ArgumentParser, default_out: Path) -> None:
    """The options every tabular benchmark shares: data folder, seeds, alpha, output file."""
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"folder of *.npz files (X, y; y=1 anomaly); default ${DATA_ENV} or {DEFAULT_DATA_DIR}",
    )
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="number of seeds, 0..N-1 (default 3)")
    p.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help="target false-positive rate of every threshold (default 0.05)",
    )
    p.add_argument("--out", type=Path, default=default_out, help=f"result CSV (default {default_out})")


Trials = Callable[[np.ndarray, np.ndarray], Iterator[dict[str, Any]]]


def run_datasets(args: argparse.Namespace, trials: Trials, line: Callable[[dict[str, Any]], str]) -> Any:
    """Every result row of ``trials(x, y)`` over the datasets ``args`` names, as a DataFrame.

    Each row gets its ``dataset`` and is printed with ``line``; ``args.out`` is rewritten after every dataset,
    so an interrupted run keeps the datasets it finished.
    """
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for path in find_datasets(args.data_dir or default_data_dir(), args.datasets):
        x, y = load_dataset(path)
        for result in trials(x, y):
            rows.append({"dataset": path.stem, **result})
            print(line(rows[-1]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(args.out, index=False)
    return pd.DataFrame(rows)
