"""REST scoring: CSV requests of several sizes to a real ``mlflow models serve`` of a registered table model.

    python -m benchmarks.rest [--rows 10000 100000 250000] [--repeats 3] [--busy] [--out FILE.json]

1. Generates the demo tables (``pipeline.data.demo.make_demo_data``) in a work folder, trains a detector on the
   training table as ``python -m flows.train`` does (``--alpha``, ``--max-epochs``, id column ``txn_id``) and
   registers it with ``flows.train_flow.register_model`` (the pyfunc the product registers) in a
   temporary embedded MLflow store (``VAE_ANOMALY_HOME`` in the work folder).
2. Starts ``mlflow models serve -m models:/NAME@champion --env-manager local`` on loopback (its own process
   group, stopped at the end) and waits for ``/ping``; one untimed 1,000-row request warms it up.
3. For each repeat, for each ``--rows`` size: POSTs that many rows (resampled from the demo's new batch, with
   their ``txn_id``) as ``text/csv`` to ``/invocations`` and times it until the whole answer is read: wall
   seconds, rows/s, HTTP status. With ``--busy`` one extra process spins on a core during the timed requests.
4. Per size: the median seconds and rows/s of the repeats. ``max_rows_in_timeout``: the largest request
   that answers within MLflow's ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` with a ``--margin`` (3x) to
   spare, at the lowest median rows/s among the sizes whose every request answered HTTP 200.

The work folder is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.machine import cpu_name

BIN = Path(sys.executable).parent
MODEL_NAME = "bench-rest"
ALIAS = "champion"
WARMUP_ROWS = 1_000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; ``--rows`` sizes and ``--repeats`` must be positive."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.rest", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 250_000], help="request sizes")
    p.add_argument("--repeats", type=int, default=3, help="timed requests of each size (default 3)")
    p.add_argument("--busy", action="store_true", help="keep one extra process spinning during the timed requests")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/rest.json"))
    p.add_argument("--max-epochs", type=int, default=20, help="training epochs of the benchmark's model")
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--margin", type=float, default=3.0, help="safety factor under the request timeout (default 3)")
    p.add_argument("--start-timeout", type=float, default=240.0, help="seconds to wait for the server's /ping")
    p.add_argument("--workdir", type=Path, default=None, help="where to make the work folder (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (store, server log)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if min(args.rows) < 1:
        p.error(f"--rows must be >= 1, got {min(args.rows)}")
    if args.margin < 1:
        p.error(f"--margin must be >= 1, got {args.margin}")
    return args


def request_timeout_s() -> int:
    """MLflow's scoring-server request timeout in effect (``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``, default 60)."""
    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT

    return int(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())


def per_size(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians of the timed runs, one entry per request size (in the order the sizes first appear)."""
    sizes = list(dict.fromkeys(r["rows"] for r in runs))
    out = []
    for n in sizes:
        mine = [r for r in runs if r["rows"] == n]
        out.append(
            {
                "rows": n,
                "csv_bytes": mine[0]["csv_bytes"],
                "median_s": round(statistics.median(r["seconds"] for r in mine), 3),
                "median_rows_per_s": round(statistics.median(r["rows_per_s"] for r in mine)),
                "statuses": [r["status"] for r in mine],
                "all_ok": all(r["status"] == 200 for r in mine),
            }
        )
    return out


def largest_request(sizes: list[dict[str, Any]], timeout_s: float, margin: float) -> dict[str, Any]:
    """The largest request that answers within ``timeout_s / margin`` at the lowest median rows/s of the
    sizes that always answered 200 (``max_rows`` None when none did)."""
    ok = [s for s in sizes if s["all_ok"]]
    if not ok:
        return {"rows_per_s": None, "max_rows": None, "timeout_s": timeout_s, "margin": margin}
    rate = min(s["median_rows_per_s"] for s in ok)
    return {
        "rows_per_s": rate,
        "max_rows": math.floor(rate * timeout_s / margin),
        "timeout_s": timeout_s,
        "margin": margin,
    }


def summary(result: dict[str, Any]) -> str:
    """A few lines: the medians per size and the largest request within the timeout."""
    lines = [
        f"mlflow models serve, CSV requests, busy={result['busy']}, {result['repeats']} repeats ({result['machine']})",
        f"{'rows':>9} {'MB':>7} {'median s':>9} {'rows/s':>9}  HTTP",
    ]
    for s in result["sizes"]:
        lines.append(
            f"{s['rows']:>9,} {s['csv_bytes'] / 1e6:>7.1f} {s['median_s']:>9.2f} {s['median_rows_per_s']:>9,}  "
            f"{','.join(str(c) for c in s['statuses'])}"
        )
    big = result["largest_request"]
    if big["max_rows"] is None:
        lines.append(f"no size answered HTTP 200 every time: no request size fits the {big['timeout_s']} s timeout")
    else:
        lines.append(
            f"MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT={big['timeout_s']} s: at {big['rows_per_s']:,} rows/s, requests "
            f"up to {big['max_rows']:,} rows answer {big['margin']:g}x within it"
        )
    return "\n".join(lines)


def build_result(
    args: argparse.Namespace, runs: list[dict[str, Any]], meta: dict[str, Any], argv: Sequence[str]
) -> dict[str, Any]:
    """The JSON result: settings, medians per size, the largest request size, every timed run, provenance."""
    sizes = per_size(runs)
    return {
        "command": "python -m benchmarks.rest " + " ".join(argv),
        "rows": list(args.rows),
        "repeats": args.repeats,
        "busy": args.busy,
        "sizes": sizes,
        "largest_request": largest_request(sizes, meta["request_timeout_s"], args.margin),
        "runs": runs,
        **meta,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "python": platform.python_version(),
    }


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` in a new process group (so that its workers stop with it), output to ``log``."""
    with log.open("wb") as f:
        return subprocess.Popen(
            cmd, cwd=log.parent, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # workers left behind by a leader that exited first
        os.killpg(proc.pid, signal.SIGKILL)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Return once ``url`` answers 200; raise if the process exits or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def spinning(busy: bool) -> Iterator[None]:
    """With ``busy``, one extra process spinning on a core for the duration (killed at the end)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        yield
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def post_csv(url: str, body: bytes, rows: int, timeout: float) -> dict[str, Any]:
    """POST ``body`` as text/csv; wall seconds until the answer is read, rows/s and the HTTP status."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "text/csv"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer, status = resp.read(), resp.status
    except urllib.error.HTTPError as e:
        answer, status = e.read(), e.code
    seconds = time.perf_counter() - t0
    run = {"rows": rows, "csv_bytes": len(body), "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}
    run["status"] = status
    if status == 200:
        n = len(json.loads(answer)["predictions"])
        if n != rows:
            raise RuntimeError(f"{rows}-row request answered {n} predictions")
    else:
        run["error"] = answer[:300].decode(errors="replace")
    return run


def register_model(work: Path, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Train on generated demo data and register the product's pyfunc in the embedded store under ``work``.

    Returns the tracking URI and facts about the model.
    """
    # VAE_ANOMALY_HOME before flows is imported: nothing touches the project's store or Prefect state.
    home = work / "home"
    home.mkdir()
    os.environ["VAE_ANOMALY_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    if "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_HOME"] = str(home / ".prefect")
    from flows.config import TrainConfig
    from flows.settings import tracking_uri
    from flows.train_flow import fit_detector, load_training_data, register_model
    from pipeline.data.demo import make_demo_data

    files = make_demo_data(work / "data")
    config = TrainConfig(
        data=files.train,
        model_name=MODEL_NAME,
        alias=ALIAS,
        id_columns=["txn_id"],
        alpha=args.alpha,
        max_epochs=args.max_epochs,
    )
    data = load_training_data.fn(config.detector(), config)
    t0 = time.perf_counter()
    det, _ = fit_detector.fn(config.detector(), data)  # the detector the train flow fits and registers
    train_s = time.perf_counter() - t0
    registered = register_model.fn(det, data, config, {}, None)  # as the train flow registers it
    uri = tracking_uri()
    return uri, {
        "model_uri": registered.model_uri,
        "model_version": registered.version,
        "train_rows": len(data.frame),
        "train_epochs": len(det.history_.train_loss),
        "train_s": round(train_s, 2),
        "new_batch": str(files.new_batch),
    }


def measure(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Register the model, serve it, time the requests; the timed runs and facts about the set-up."""
    import mlflow
    import pandas as pd

    uri, model = register_model(work, args)
    timeout_s = request_timeout_s()
    batch = pd.read_csv(model.pop("new_batch"), dtype={"txn_id": str})
    bodies = {n: batch.sample(n, replace=True, random_state=n).to_csv(index=False).encode() for n in args.rows}
    warm = batch.sample(WARMUP_ROWS, replace=True, random_state=0).to_csv(index=False).encode()
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = work / "serve.log"
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", model["model_uri"], "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    t0 = time.perf_counter()
    server = start(cmd, log, env)
    runs: list[dict[str, Any]] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", server, log, args.start_timeout)
        start_s = time.perf_counter() - t0
        url = f"http://127.0.0.1:{port}/invocations"
        warmup = post_csv(url, warm, WARMUP_ROWS, timeout_s + 60)
        with spinning(args.busy):
            load_before = os.getloadavg()[0]
            for r in range(args.repeats):
                for n in args.rows:
                    run = {"repeat": r + 1, **post_csv(url, bodies[n], n, timeout_s + 60)}
                    run["load1"] = round(os.getloadavg()[0], 2)
                    runs.append(run)
                    print(
                        f"repeat {r + 1}/{args.repeats}: rows={n:,} http={run['status']} seconds={run['seconds']:.2f} "
                        f"rows/s={run['rows_per_s']:,} load={run['load1']}",
                        flush=True,
                    )
    finally:
        stop(server)
    meta = {
        **model,
        "request_timeout_s": timeout_s,
        "server_start_s": round(start_s, 2),
        "warmup": {"rows": WARMUP_ROWS, "status": warmup["status"], "seconds": warmup["seconds"]},
        "load1_before": round(load_before, 2),
        "cpus": os.cpu_count(),
        "mlflow": mlflow.__version__,
        "torch": _version("torch"),
    }
    return runs, meta


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print a summary and write the JSON result to ``--out``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-rest-", dir=args.workdir))
    try:
        runs, meta = measure(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = build_result(args, runs, meta, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(summary(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
