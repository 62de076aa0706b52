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
import csv
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.baselines import BASELINES, MethodResult

log = logging.getLogger("benchmarks.tabular")

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "VAE_ANOMALY_DATA"
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "tabular"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "tabular.csv"
DEFAULT_ALPHA = 0.05
DEFAULT_SEEDS = 3

COLUMNS = [
    "dataset",
    "seed",
    "method",
    "n_train",
    "n_test_normal",
    "n_test_anomaly",
    "auroc",
    "auprc",
    "threshold_fpr",
    "threshold_recall",
    "fit_s",
    "score_s",
    "calibration",
    "note",
]
METRIC_COLUMNS = ["auroc", "auprc", "threshold_fpr", "threshold_recall", "fit_s", "score_s"]


# ------------------------------------------------------------------ our detector
def make_vae_detector(alpha: float, seed: int, calibration: str = "auto") -> Any:
    """The one place where the benchmark builds the VAE detector (change its settings here)."""
    from pipeline.detector import VAEAnomalyDetector

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


# ------------------------------------------------------------------ protocol
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


# ------------------------------------------------------------------ output
def write_csv_atomic(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _tmp_path(path: Path) -> Path:
    """A temporary name next to ``path`` (same file system, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float | np.floating):
        return "n/a" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    align = ["---" if i == 0 else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_fmt(v, digits) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(rows: list[dict[str, Any]], methods: Sequence[str], meta: dict[str, Any]) -> str:
    """Mean AUROC per method, per-dataset AUROC, threshold behaviour and time, as markdown."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        return "(no results)\n"
    for c in METRIC_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    methods = [m for m in methods if m in set(df["method"])]
    datasets = list(dict.fromkeys(df["dataset"]))
    by_ds = df.groupby(["dataset", "method"])[METRIC_COLUMNS].mean()  # mean over seeds (NaN skipped)

    def per_ds(col: str) -> pd.DataFrame:
        return by_ds[col].unstack("method").reindex(index=datasets, columns=methods)

    auroc, auprc = per_ds("auroc"), per_ds("auprc")
    fpr, rec = per_ds("threshold_fpr"), per_ds("threshold_recall")
    n_seeds = df.groupby("method")["seed"].nunique()
    secs = df.groupby("method")[["fit_s", "score_s"]].sum()
    failed = df[df["auroc"].isna()]

    out = [
        f"Tabular benchmark, alpha={meta['alpha']}, seeds={meta['seeds']}, {len(datasets)} datasets, "
        f"{meta['torch_threads']} torch threads on {meta['cpu']} ({meta['cpu_count']} CPUs)"
        f"{', GPU ' + meta['gpu'] if meta.get('gpu') else ''}, {meta['date']}.",
        (f"Training pools capped at {meta['max_normal_train']} normal rows. " if meta.get("max_normal_train") else "")
        + f"vae-anomaly calibration: {meta.get('calibration', 'auto')}.",
        "Means are over datasets of the per-dataset mean over seeds; n/a = no result.",
        "",
        "### Mean AUROC per method",
        "",
        md_table(
            ["method", "mean AUROC", "mean AUPRC", "datasets", "seeds"],
            [
                [m, float(auroc[m].mean()), float(auprc[m].mean()), int(auroc[m].notna().sum()), int(n_seeds.get(m, 0))]
                for m in methods
            ],
        ),
        "",
        "### Mean AUROC per dataset",
        "",
        md_table(["dataset", *methods], [[d, *(float(auroc.loc[d, m]) for m in methods)] for d in datasets]),
        "",
        f"### Threshold behaviour (target false-positive rate alpha={meta['alpha']})",
        "",
        md_table(
            ["method", "mean threshold_fpr", "mean threshold_recall"],
            [[m, float(fpr[m].mean()), float(rec[m].mean())] for m in methods],
        ),
        "",
        "### Time (wall seconds summed over all datasets and seeds)",
        "",
        md_table(
            ["method", "fit_s", "score_s"],
            [[m, float(secs.loc[m, "fit_s"]), float(secs.loc[m, "score_s"])] for m in methods],
            digits=1,
        ),
        "",
    ]
    if len(failed):
        out += [
            "### Rows without a result",
            "",
            md_table(
                ["dataset", "seed", "method", "note"], failed[["dataset", "seed", "method", "note"]].to_numpy().tolist()
            ),
            "",
        ]
    return "\n".join(out)


# ------------------------------------------------------------------ environment
def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def environment(argv: Sequence[str], threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    return {
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.tabular", *argv]),
        "cwd": str(Path.cwd()),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpus_available": available_cpus(),
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "processor": platform.processor(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "pyod": _version("pyod"),
            "scikit-learn": _version("scikit-learn"),
            "numpy": np.__version__,
            "pandas": _version("pandas"),
        },
    }


# ------------------------------------------------------------------ CLI
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
                    f"  {path.stem:<12} seed={seed} {method:<12} auroc={_fmt(row['auroc'])} "
                    f"auprc={_fmt(row['auprc'])} fpr={_fmt(row['threshold_fpr'], 3)} "
                    f"recall={_fmt(row['threshold_recall'], 3)} fit_s={_fmt(row['fit_s'], 2)} "
                    f"score_s={_fmt(row['score_s'], 2)}"
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
