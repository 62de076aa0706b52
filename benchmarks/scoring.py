"""Scoring throughput: ``python -m flows.score`` on a big CSV against the I/O floor and PyOD, in one run.

    python -m benchmarks.scoring --rows 1000000 [--cols 21] [--out FILE.json]

1. Generates ``--train-rows`` training rows and a ``--rows``-row CSV from the same distribution
   (``--cols`` numeric columns of one Gaussian mixture, 4 decimals) in a work folder.
2. Trains and registers a detector with ``python -m flows.train`` (its defaults, ``--max-epochs``)
   in a temporary MLflow store (``VAE_ANOMALY_HOME`` in the work folder), unless ``--model`` names one.
3. ``startup_s``: ``python -m flows.score`` on a 1-row file (``startup_first_s``: the first such run,
   which creates the Prefect and MLflow state; ``startup_s`` the second). A running Prefect server is
   used when ``PREFECT_API_URL`` is set, else each CLI run starts Prefect's ephemeral API.
4. ``score_s``: the same CLI on the big file, measured as a whole (a subprocess: start-up, model
   loading, reading, scoring, writing the report and its summary); ``peak_rss_mb``: the child's peak
   resident memory (``os.wait4``); ``score_file_s``: the part of it spent in the ``score_file`` task
   (reading, scoring, writing the report and its summary), from the summary the CLI writes.
5. ``io_floor_s``: a plain ``pyarrow.csv.read_csv`` of the same file and ``pyarrow.csv.write_csv`` of
   the table it read, in this process (pyarrow's own threads).
6. ``pyod_score_s``: PyOD's ``VAE.decision_function`` on the same rows (already in memory), fitted
   on a ``--pyod-fit-rows`` sample of the training rows for ``--pyod-epochs`` epochs (PyOD's
   defaults otherwise), with as many torch threads as the CLI's model: only its scoring is timed.

The generated files are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
BYTES_PER_CELL = 9  # measured: 4-decimal values of the mixture average 8-9 characters with the comma
MODEL_NAME = "bench-scoring"


def sample_rows(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) rows of one fixed 4-component Gaussian mixture (``benchmarks.training.make_rows``'s, seed 0),
    drawn with ``seed``, rounded to 4 decimals: every call samples the same distribution."""
    fixed = np.random.default_rng(0)
    centers = fixed.normal(0, 3, size=(4, d))
    mix = fixed.normal(size=(d, d)) / np.sqrt(d)
    rng = np.random.default_rng(seed)
    comp = rng.integers(0, 4, size=n)
    return np.round(centers[comp] + rng.normal(size=(n, d)) @ mix, 4)


def write_csv(path: Path, rows: int, cols: int, seed: int, block: int = 500_000) -> int:
    """Write ``rows`` generated rows to ``path`` in blocks (bounded memory); returns the file size."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [f"x{j}" for j in range(cols)]
    with pacsv.CSVWriter(path, pa.schema([(n, pa.float64()) for n in names])) as writer:
        for i, start in enumerate(range(0, rows, block)):
            x = sample_rows(min(block, rows - start), cols, seed=seed + i)
            writer.write_table(pa.table({n: x[:, j] for j, n in enumerate(names)}))
    return path.stat().st_size


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, exit code and the child's peak RSS (MiB, from ``wait4``)."""
    with open(log, "w") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {log.read_text()[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def io_floor(path: Path, out: Path) -> float:
    """Seconds to read ``path`` with pyarrow and write the table back as CSV."""
    import pyarrow.csv as pacsv

    t0 = time.perf_counter()
    table = pacsv.read_csv(path)
    pacsv.write_csv(table, out)
    seconds = time.perf_counter() - t0
    out.unlink()
    return seconds


def pyod_score(train: np.ndarray, path: Path, fit_rows: int, epochs: int) -> dict[str, Any]:
    """PyOD's VAE fitted on a sample of ``train``; seconds of ``decision_function`` on the rows of ``path``.

    It runs with one torch thread, as the scoring CLI's model does on a 2-core machine
    (``pipeline.score.scoring.model_threads``): the same compute for both.
    """
    import pyarrow.csv as pacsv
    import torch
    from pyod.models.vae import VAE

    from pipeline.score.scoring import model_threads

    torch.set_num_threads(model_threads())

    table = pacsv.read_csv(path)
    x = np.column_stack([c.to_numpy() for c in table.columns]).astype(np.float64, copy=False)
    del table
    model = VAE(epoch_num=epochs, verbose=0)
    model.fit(train[:fit_rows])
    t0 = time.perf_counter()
    model.decision_function(x)
    return {
        "seconds": time.perf_counter() - t0,
        "fit_rows": min(fit_rows, len(train)),
        "epochs": epochs,
        "threads": torch.get_num_threads(),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scoring", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, required=True, help="rows of the CSV to score")
    p.add_argument("--cols", type=int, default=21, help="numeric columns (default 21)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/scoring.json"))
    p.add_argument("--workdir", type=Path, default=None, help="where to generate files (default: a temp folder)")
    p.add_argument("--train-rows", type=int, default=20_000)
    p.add_argument("--max-epochs", type=int, default=20, help="training epochs of the benchmark's model")
    p.add_argument(
        "--model",
        default=None,
        help="score with this registered model instead of training one "
        "(it must take columns x0..x{cols-1}; VAE_ANOMALY_HOME / MLFLOW_TRACKING_URI as set)",
    )
    p.add_argument("--pyod-fit-rows", type=int, default=20_000)
    p.add_argument("--pyod-epochs", type=int, default=10)
    p.add_argument("--no-pyod", action="store_true", help="skip the PyOD measurement")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir is not None:  # a --workdir that does not exist yet is made, not a traceback
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-scoring-", dir=args.workdir))
    try:
        result = run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["command"] = "python -m benchmarks.scoring " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    need = args.rows * args.cols * BYTES_PER_CELL * 2.2  # the input, the I/O floor's copy, the report
    free = shutil.disk_usage(work).free
    if free < need:
        raise SystemExit(f"not enough disk in {work}: about {need / 2**30:.1f} GiB needed, {free / 2**30:.1f} free")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.model is None:
        (work / "home").mkdir()
        env["VAE_ANOMALY_HOME"] = str(work / "home")
        env.pop("MLFLOW_TRACKING_URI", None)
        if "PREFECT_API_URL" not in env:
            env["PREFECT_HOME"] = str(work / "home" / ".prefect")
    train = sample_rows(args.train_rows, args.cols, seed=10_000_000)
    train_csv = work / "train.csv"
    np.savetxt(
        train_csv, train, delimiter=",", fmt="%.4f", header=",".join(f"x{j}" for j in range(args.cols)), comments=""
    )
    one = work / "one.csv"
    one.write_text(train_csv.read_text().split("\n", 2)[0] + "\n" + train_csv.read_text().split("\n", 2)[1] + "\n")
    result: dict[str, Any] = {"rows": args.rows, "cols": args.cols}
    t0 = time.perf_counter()
    result["csv_bytes"] = write_csv(work / "big.csv", args.rows, args.cols, seed=1)
    result["generate_s"] = round(time.perf_counter() - t0, 2)
    model = args.model or f"models:/{MODEL_NAME}@champion"
    if args.model is None:
        r = run_measured(
            [
                sys.executable,
                "-m",
                "flows.train",
                "--data",
                str(train_csv),
                "--model-name",
                MODEL_NAME,
                "--alpha",
                "0.01",
                "--max-epochs",
                str(args.max_epochs),
            ],
            env,
            ROOT,
            work / "train.log",
        )
        result["train_s"] = round(r["seconds"], 2)
    score = [sys.executable, "-m", "flows.score", "--model", model, "--out", str(work / "reports")]
    first = run_measured([*score, str(one)], env, ROOT, work / "one-first.log")
    again = run_measured([*score, str(one)], env, ROOT, work / "one.log")
    big = run_measured([*score, str(work / "big.csv")], env, ROOT, work / "big.log")
    floor = io_floor(work / "big.csv", work / "copy.csv")
    result.update(
        {
            "score_s": round(big["seconds"], 2),
            "io_floor_s": round(floor, 3),
            "ratio_to_io_floor": round(big["seconds"] / floor, 2),
            "peak_rss_mb": round(big["peak_rss_mb"], 1),
            "rows_per_s": round(args.rows / big["seconds"]),
            "startup_s": round(again["seconds"], 2),
            "startup_first_s": round(first["seconds"], 2),
            "startup_peak_rss_mb": round(again["peak_rss_mb"], 1),
            "report_bytes": (work / "reports" / "big.anomalies.csv").stat().st_size,
            # the score_file task alone (reading, scoring, writing, summary), as the CLI's summary records it
            "score_file_s": round(json.loads((work / "reports" / "big.summary.json").read_text())["seconds"], 2),
        }
    )
    if not args.no_pyod:
        pyod = pyod_score(train, work / "big.csv", args.pyod_fit_rows, args.pyod_epochs)
        result.update(
            {
                "pyod_score_s": round(pyod["seconds"], 2),
                "pyod_fit_rows": pyod["fit_rows"],
                "pyod_epochs": pyod["epochs"],
                "pyod_torch_threads": pyod["threads"],
            }
        )
    else:
        result["pyod_score_s"] = None
    import torch

    result.update(
        {
            "prefect_api": "PREFECT_API_URL" if "PREFECT_API_URL" in os.environ else "ephemeral",
            "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "python": platform.python_version(),
            "torch": torch.__version__,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    return result


if __name__ == "__main__":
    sys.exit(main())
