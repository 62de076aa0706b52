"""Tabular benchmark: the VAE detector against pyod's VAE, kNN distance and IsolationForest.

Run ``python -m benchmarks.tabular --help``. Per dataset (``*.npz`` with arrays ``X`` and ``y``,
y = 1 for anomalies) and seed, the normal rows are shuffled with ``numpy.random.default_rng(seed)``:
half go to the training pool, the other half plus every anomaly to the test set. All methods see
the same training pool only. Results go to a CSV (one row per dataset x seed x method, rewritten
atomically after every row so that a long run leaves partial results), a ``.meta.json`` sidecar
and a markdown summary next to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.baselines import BASELINES, MethodResult
from benchmarks.machine import available_cpus, environment
from benchmarks.protocol import (
    REPO_ROOT,
    add_protocol_arguments,
    default_data_dir,
    evaluate,
    find_datasets,
    load_dataset,
    split,
)
from benchmarks.results import fmt, summary_markdown, write_csv_atomic, write_text_atomic

log = logging.getLogger("benchmarks.tabular")

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "tabular.csv"


# ------------------------------------------------------------------ our detector
def make_vae_detector(alpha: float, seed: int, calibration: str = "auto") -> Any:
    """The one place where the benchmark builds the VAE detector (change its settings here)."""
    from pipeline.detect.detector import VAEAnomalyDetector

    return VAEAnomalyDetector(alpha=alpha, seed=seed, calibration=calibration)


def _frame(x: np.ndarray) -> Any:
    import pandas as pd

    return pd.DataFrame(np.asarray(x, dtype=np.float64), columns=[f"x{i}" for i in range(x.shape[1])])


def run_vae_anomaly(
    x_train: np.ndarray, x_test: np.ndarray, *, alpha: float, seed: int, calibration: str = "auto"
) -> MethodResult:
    """Our VAEAnomalyDetector; its threshold is its own calibrated ``threshold_`` (by the ``calibration`` rule).

    A training pool too small for ``alpha`` (InputError) gives a result without scores and a note.
    """
    from pipeline.errors import InputError

    t0 = time.perf_counter()
    try:
        det = make_vae_detector(alpha, seed, calibration).fit(_frame(x_train))
    except InputError as e:
        return MethodResult(None, note=f"not run: InputError: {e}")
    t1 = time.perf_counter()
    scores = np.asarray(det.score_samples(_frame(x_test)), dtype=np.float64)
    t2 = time.perf_counter()
    h = getattr(det, "history_", None)
    info = f"epochs={len(h.train_loss)} best={h.best_epoch} bs={h.batch_size}" if h is not None else ""
    if hasattr(det, "kl_weight_"):
        info += f" kl_weight={det.kl_weight_:g} active={det.active_units_}"
    rule = getattr(det, "calibration_rule_", "split")
    return MethodResult(scores, float(det.threshold_), t1 - t0, t2 - t1, info=info, calibration=rule)


METHODS: dict[str, Callable[..., MethodResult]] = {"vae-anomaly": run_vae_anomaly, **BASELINES}


# ------------------------------------------------------------------ CLI
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tabular",
        description="Benchmark vae-anomaly against pyod's VAE, kNN and IsolationForest on tabular *.npz data.",
    )
    add_protocol_arguments(p, DEFAULT_OUT)
    p.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        metavar="METHOD",
        help=f"methods to run (default all: {' '.join(METHODS)})",
    )
    p.add_argument(
        "--datasets", nargs="+", default=None, metavar="NAME", help="dataset names (file stems) to run (default all)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: the CPUs available to this process)"
    )
    p.add_argument(
        "--max-normal-train",
        type=int,
        default=None,
        metavar="N",
        help="train every method on a seeded sample of at most N rows of each training pool (small-table runs)",
    )
    p.add_argument(
        "--calibration",
        choices=("auto", "split", "cross"),
        default="auto",
        help="vae-anomaly's calibration rule (default auto: the detector's default)",
    )
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if not 0.0 < args.alpha < 1.0:
        p.error("--alpha must be in (0, 1)")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.max_normal_train is not None and args.max_normal_train < 1:
        p.error("--max-normal-train must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data_dir = (args.data_dir or default_data_dir()).resolve()
    try:
        files = find_datasets(data_dir, args.datasets)
    except FileNotFoundError as e:
        log.error("%s", e)
        return 2
    out: Path = args.out.resolve()
    meta_path = out.with_name(out.name + ".meta.json")
    md_path = out.with_suffix(".md")
    methods: list[str] = list(dict.fromkeys(args.methods))

    meta = environment(argv, args.threads or available_cpus())
    meta |= {
        "data_dir": str(data_dir),
        "datasets": [f.stem for f in files],
        "methods": methods,
        "seeds": args.seeds,
        "alpha": args.alpha,
        "max_normal_train": args.max_normal_train,
        "calibration": args.calibration,
        "out": str(out),
        "status": "running",
    }
    write_text_atomic(json.dumps(meta, indent=1) + "\n", meta_path)
    print(
        f"benchmarks.tabular: {len(files)} datasets x {args.seeds} seeds x {len(methods)} methods, alpha={args.alpha}",
        flush=True,
    )
    print(
        f"machine: {meta['cpu']} | cpu_count={meta['cpu_count']} available={meta['cpus_available']} | "
        f"torch threads={meta['torch_threads']} | torch {meta['versions']['torch']}, pyod "
        f"{meta['versions']['pyod']}, sklearn {meta['versions']['scikit-learn']}, numpy {np.__version__}",
        flush=True,
    )
    print(f"data: {data_dir} -> {out}", flush=True)

    rows: list[dict[str, Any]] = []
    errors = 0
    t_start = time.perf_counter()
    for path in files:
        x, y = load_dataset(path)
        print(f"== {path.stem}: n={len(y)} d={x.shape[1]} anomalies={int(y.sum())}", flush=True)
        for seed in range(args.seeds):
            train_idx, test_idx, y_test = split(y, seed, args.max_normal_train)
            x_train, x_test = x[train_idx], x[test_idx]
            base = {
                "dataset": path.stem,
                "seed": seed,
                "n_train": len(train_idx),
                "n_test_normal": int((y_test == 0).sum()),
                "n_test_anomaly": int((y_test == 1).sum()),
            }
            for method in methods:
                try:
                    extra = {"calibration": args.calibration} if method == "vae-anomaly" else {}
                    res = METHODS[method](x_train, x_test, alpha=args.alpha, seed=seed, **extra)
                except Exception as e:
                    errors += 1
                    log.exception("%s seed=%d %s failed", path.stem, seed, method)
                    res = MethodResult(None, note=f"error: {type(e).__name__}: {e}")
                row = {**base, "method": method, **evaluate(y_test, res)}
                rows.append(row)
                write_csv_atomic(rows, out)
                line = (
                    f"  {path.stem:<12} seed={seed} {method:<12} auroc={fmt(row['auroc'])} "
                    f"auprc={fmt(row['auprc'])} fpr={fmt(row['threshold_fpr'], 3)} "
                    f"recall={fmt(row['threshold_recall'], 3)} fit_s={fmt(row['fit_s'], 2)} "
                    f"score_s={fmt(row['score_s'], 2)}"
                )
                if res.info:
                    line += f" [{res.info}]"
                if row["note"]:
                    line += f"  NOTE: {row['note']}"
                print(line, flush=True)
        write_text_atomic(summary_markdown(rows, methods, meta), md_path)

    wall = time.perf_counter() - t_start
    meta |= {
        "status": "finished" if not errors else f"finished with {errors} errors",
        "wall_s": round(wall, 1),
        "rows": len(rows),
    }
    write_text_atomic(json.dumps(meta, indent=1) + "\n", meta_path)
    md = summary_markdown(rows, methods, meta)
    write_text_atomic(md, md_path)
    print("\n" + md, flush=True)
    print(f"total wall time {wall:.1f} s; wrote {out}, {md_path.name}, {meta_path.name}", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
