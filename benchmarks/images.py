"""Image benchmark, one-vs-rest: one class is normal, the other nine are anomalies.

    python -m benchmarks.images [--dataset fashion-mnist|mnist] [--data-dir DIR] [--classes 0 1 ...] [--out FILE.csv]

Data: the IDX files in ``../shared/data/images/<dataset>/`` (``--data-dir`` or ``$VAE_ANOMALY_IMAGE_DATA``
names the folder that holds ``fashion-mnist/`` and ``mnist/``).
- Fashion-MNIST: train on the training images of the class, test on the whole test set (1,000 normal, 9,000
  anomalies).
- MNIST (only its test set is here): each class's test images are split in half with
  ``numpy.random.default_rng(seed)``; train on the first half of the normal class, test on the second halves
  of all classes.
Methods, side by side on the same images: ``vae-anomaly`` (pipeline.detect.image_detector.ImageVAEDetector with
its defaults; it holds 15% of the training images out for early stopping and 20% for calibration),
``pyod-vae`` (pyod's VAE with its defaults on the flattened pixels, as in the tabular benchmark) and ``knn``
(distance to the 5th nearest training image, flattened pixels in [0, 1], Euclidean). Results: one CSV row per
class x method (``dataset,class,method,auroc,auprc,fit_s,score_s``, rewritten atomically after each row), and a
markdown table with the per-class values and means beside it (``.md``).

Ablation knobs (``--likelihood``, ``--score-method``, ``--latent-dim``, ``--epochs``, ``--n-models``,
``--conv-channels``, ``--latent-k``, ``--latent-weight``) change the
vae-anomaly settings for every class alike; a non-default run names its method ``vae-anomaly[...]``.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("benchmarks.images")

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "VAE_ANOMALY_IMAGE_DATA"
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "images"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "images-{dataset}.csv"
COLUMNS = ["dataset", "class", "method", "auroc", "auprc", "fit_s", "score_s"]
METHODS = ("vae-anomaly", "pyod-vae", "knn")
KNN_K = 5


def _idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_dataset(name: str, data_dir: Path, seed: int = 0) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per class c: (x_train (n, 1, 28, 28) float32 in [0, 1], x_test, y_test with 1 = anomaly).

    Raises:
        FileNotFoundError: the IDX files are not in ``data_dir/name``.
    """
    d = data_dir / name
    test_x = _idx(d / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    test_y = _idx(d / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    out = {}
    if name == "fashion-mnist":
        train_x = _idx(d / "train-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
        train_y = _idx(d / "train-labels-idx1-ubyte.gz", 8).astype(np.int64)
        for c in range(10):
            out[c] = (train_x[train_y == c], test_x, (test_y != c).astype(np.int64))
        return out
    rng = np.random.default_rng(seed)
    halves = {}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(test_y == c))
        halves[c] = (idx[: len(idx) // 2], idx[len(idx) // 2 :])
    test_idx = np.sort(np.concatenate([halves[c][1] for c in range(10)]))
    for c in range(10):
        out[c] = (test_x[np.sort(halves[c][0])], test_x[test_idx], (test_y[test_idx] != c).astype(np.int64))
    return out


def make_vae_detector(seed: int, overrides: dict) -> object:
    """The one place where the benchmark builds the image detector (its defaults unless ablated)."""
    from pipeline.detect.image_detector import ImageVAEDetector
    from vae.config import ImageTrainConfig

    epochs = overrides.pop("epochs", None)
    tc = ImageTrainConfig(max_epochs=epochs) if epochs else None
    return ImageVAEDetector(alpha=0.05, seed=seed, train_config=tc, **overrides)


def run_vae(x_train: np.ndarray, x_test: np.ndarray, seed: int, overrides: dict) -> tuple[np.ndarray, float, float]:
    t0 = time.perf_counter()
    det = make_vae_detector(seed, dict(overrides)).fit(x_train)  # type: ignore[attr-defined]
    t1 = time.perf_counter()
    scores = det.score_samples(x_test)
    h = det.history_
    log.info("vae-anomaly: %d epochs (best %d), %.0f images/s", len(h.train_loss), h.best_epoch, h.samples_per_s)
    return scores, t1 - t0, time.perf_counter() - t1


def run_pyod(x_train: np.ndarray, x_test: np.ndarray, seed: int) -> tuple[np.ndarray, float, float]:
    from benchmarks.baselines import run_pyod_vae

    r = run_pyod_vae(x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1), alpha=0.05, seed=seed)
    return r.scores, r.fit_s, r.score_s  # type: ignore[return-value]


def run_knn(x_train: np.ndarray, x_test: np.ndarray, seed: int) -> tuple[np.ndarray, float, float]:
    """Euclidean distance to the 5th nearest training image, flattened pixels in [0, 1] (no scaling)."""
    from sklearn.neighbors import NearestNeighbors

    t0 = time.perf_counter()
    nn = NearestNeighbors(n_neighbors=KNN_K).fit(x_train.reshape(len(x_train), -1))
    t1 = time.perf_counter()
    dist, _ = nn.kneighbors(x_test.reshape(len(x_test), -1))
    return dist[:, -1].astype(np.float64), t1 - t0, time.perf_counter() - t1


def write_results(rows: list[dict], out: Path) -> None:
    from pipeline.score.report import write_csv_atomic, write_text_atomic

    frame = pd.DataFrame(rows, columns=COLUMNS)
    write_csv_atomic(frame, out)
    write_text_atomic(markdown(frame), out.with_suffix(".md"))


def markdown(frame: pd.DataFrame) -> str:
    """Per-class AUROC table with one column per method, the mean row last; then mean AUPRC and timings."""
    if frame.empty:
        return ""
    lines = []
    for ds, part in frame.groupby("dataset", sort=False):
        auroc = part.pivot_table(index="class", columns="method", values="auroc", sort=False)
        methods = list(auroc.columns)
        lines += [
            f"### {ds}: AUROC per normal class",
            "",
            "| class | " + " | ".join(methods) + " |",
            "|---|" + "---:|" * len(methods),
        ]
        for c, row in auroc.iterrows():
            lines.append(f"| {c} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{v:.4f}**" for v in auroc.mean()) + " |")
        means = part.groupby("method", sort=False)[["auprc", "fit_s", "score_s"]].mean()
        lines += ["", "| method | mean AUPRC | mean fit_s | mean score_s |", "|---|---:|---:|---:|"]
        lines += [f"| {m} | {r.auprc:.4f} | {r.fit_s:.1f} | {r.score_s:.1f} |" for m, r in means.iterrows()]
        lines.append("")
    return "\n".join(lines)


_WORKER_DATA: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _init_worker(dataset: str, data_dir: Path, seed: int) -> None:
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    _WORKER_DATA.update(load_dataset(dataset, data_dir, seed))


def _run_task(task: tuple) -> dict:
    """One class x method: the CSV row."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    dataset, c, method, seed, overrides, vae_name = task
    x_train, x_test, y = _WORKER_DATA[c]
    if method == "vae-anomaly":
        (scores, fit_s, score_s), name = run_vae(x_train, x_test, seed, overrides), vae_name
    elif method == "pyod-vae":
        (scores, fit_s, score_s), name = run_pyod(x_train, x_test, seed), method
    else:
        (scores, fit_s, score_s), name = run_knn(x_train, x_test, seed), method
    return {
        "dataset": dataset,
        "class": c,
        "method": name,
        "auroc": roc_auc_score(y, scores),
        "auprc": average_precision_score(y, scores),
        "fit_s": fit_s,
        "score_s": score_s,
    }


def _record(rows: list[dict], row: dict, out: Path) -> None:
    rows.append(row)
    write_results(rows, out)
    log.info(
        "class %d %-12s AUROC %.4f AUPRC %.4f fit %.1fs score %.1fs",
        row["class"],
        row["method"],
        row["auroc"],
        row["auprc"],
        row["fit_s"],
        row["score_s"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.images", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist"])
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"folder holding fashion-mnist/ and mnist/ (default: ${DATA_ENV} or {DEFAULT_DATA_DIR})",
    )
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)), choices=range(10), metavar="C")
    p.add_argument(
        "--out", type=Path, default=None, help="results CSV (default: benchmarks/results/images-<dataset>.csv)"
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="class x method tasks run in parallel processes (1 thread each)")
    ab = p.add_argument_group("ablation of vae-anomaly (default: the product's defaults)")
    ab.add_argument("--likelihood", choices=["gaussian", "bernoulli", "cbernoulli"])
    ab.add_argument("--score-method", choices=["recon", "elbo", "iwae"])
    ab.add_argument("--latent-dim", type=int)
    ab.add_argument("--epochs", type=int)
    ab.add_argument("--n-models", type=int)
    ab.add_argument("--conv-channels", type=int, nargs=2)
    ab.add_argument("--latent-k", type=int, help="latent density term: k-th nearest training code (0 = off)")
    ab.add_argument("--latent-weight", type=float, help="weight of the standardised latent term")
    ab.add_argument("--density-space", choices=["latent", "conv"], help="codes of the density terms")
    ab.add_argument("--cosine-weight", type=float, help="weight of the unit-length conv-feature term (conv space)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    data_dir = args.data_dir or Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)
    out = args.out or Path(str(DEFAULT_OUT).format(dataset=args.dataset))
    try:
        data = load_dataset(args.dataset, data_dir, args.seed)
    except FileNotFoundError as e:
        print(
            f"python -m benchmarks.images: error: {e.filename} not found: pass --data-dir or set ${DATA_ENV}",
            file=sys.stderr,
        )
        return 2
    overrides = {
        k: v
        for k, v in {
            "likelihood": args.likelihood,
            "score_method": args.score_method,
            "latent_dim": args.latent_dim,
            "epochs": args.epochs,
            "n_models": args.n_models,
            "conv_channels": tuple(args.conv_channels) if args.conv_channels else None,
            "latent_k": args.latent_k,
            "latent_weight": args.latent_weight,
            "density_space": args.density_space,
            "cosine_weight": args.cosine_weight,
        }.items()
        if v is not None
    }
    vae_name = "vae-anomaly" + (f"[{','.join(f'{k}={v}' for k, v in overrides.items())}]" if overrides else "")
    import torch

    torch.set_num_threads(1)  # also for scoring: the machine is shared (../shared/NOTES-torch-pyod.md)
    log.info(
        "%s on %s (%d CPUs), torch %s, %d thread(s) x %d job(s), %s",
        args.dataset,
        platform.processor() or platform.machine(),
        os.cpu_count(),
        torch.__version__,
        torch.get_num_threads(),
        args.jobs,
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    rows: list[dict] = []
    tasks = [(args.dataset, c, m, args.seed, overrides, vae_name) for c in args.classes for m in args.methods]
    if args.jobs > 1:  # one process per task, 1 torch thread each; the data are loaded once per worker
        from concurrent.futures import ProcessPoolExecutor, as_completed

        init = (args.dataset, data_dir, args.seed)
        with ProcessPoolExecutor(args.jobs, initializer=_init_worker, initargs=init) as ex:
            for fut in as_completed([ex.submit(_run_task, t) for t in tasks]):
                _record(rows, fut.result(), out)
    else:
        _WORKER_DATA.update(data)
        for t in tasks:
            _record(rows, _run_task(t), out)
    rows.sort(key=lambda r: (r["class"], args.methods.index(r["method"].split("[")[0])))
    write_results(rows, out)
    print(markdown(pd.DataFrame(rows, columns=COLUMNS)))
    print(f"results: {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
