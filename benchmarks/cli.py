"""CLI response times: how long ``python -m flows.score`` takes to answer, as a user meets it.

    python -m benchmarks.cli [--runs 3] [--out benchmarks/results/cli.json]

In a temporary project home (its own embedded MLflow store and Prefect state), it trains and registers a
small table model with ``python -m flows.train``, then times each case as a whole process (the median,
minimum and maximum of ``--runs`` runs, after one untimed warm-up run of each):

- ``help``: ``--help``;
- ``missing-file``: a path that does not exist;
- ``missing-column``: a table without one of the model's columns;
- ``unknown-alias``: ``--model models:/NAME@nope``;
- ``score-1-row``: scoring a 1-row table with the embedded defaults (Prefect's ephemeral API);
- ``score-1-row-server``: the same with ``PREFECT_API_URL`` set to a Prefect server started for the run.

To say where a 1-row score spends its time, it also times ``import prefect, mlflow, torch`` and a flow of
one trivial task against the ephemeral API and against the server. Each case records its exit code; a case
that answers with another code than expected is marked ``ok: false``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import available_cpus, cpu_name

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-cli"
TARGETS_S = {
    "help": 1.0,
    "missing-file": 3.0,
    "missing-column": 3.0,
    "unknown-alias": 3.0,
    "score-1-row": 5.0,
    "score-1-row-server": 3.0,
}
TRIVIAL_FLOW = "from prefect import flow, task\nt = task(lambda: 1)\nflow(lambda: t())()\n"


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall time, exit code and last stderr line of one process."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    err = r.stderr.strip().splitlines()
    return time.perf_counter() - t0, r.returncode, err[-1] if err else ""


def timed(cmd: list[str], env: dict[str, str], runs: int) -> dict[str, Any]:
    run_once(cmd, env)  # warm-up: file caches, bytecode, the Prefect database
    times, codes, last = [], [], ""
    for _ in range(runs):
        s, code, last = run_once(cmd, env)
        times.append(s)
        codes.append(code)
    return {
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "exit_codes": sorted(set(codes)),
        "stderr_last_line": last[:300],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_prefect_server(env: dict[str, str], home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Prefect server on a free loopback port, healthy; returns it and its API URL."""
    import urllib.request

    port = free_port()
    server_env = {**env, "PREFECT_HOME": str(home / "prefect-server"), "PREFECT_UI_ENABLED": "false"}
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the Prefect server on port {port} did not become healthy in 120 s")


def prepare(work: Path, env: dict[str, str]) -> dict[str, Path]:
    """Demo tables in ``work``, and a small model registered as models:/bench-cli@champion."""
    sys.path.insert(0, str(ROOT))
    import pandas as pd

    from pipeline.data.demo import make_demo_data

    files = make_demo_data(work / "data")
    batch = pd.read_csv(files.new_batch, dtype={"txn_id": str})
    one, missing = work / "one.csv", work / "missing_column.csv"
    batch.head(1).to_csv(one, index=False)
    batch.drop(columns=[batch.columns[2]]).head(5).to_csv(missing, index=False)
    train = [sys.executable, "-m", "flows.train", "--data", str(files.train), "--model-name", MODEL]
    r = subprocess.run(
        [*train, "--id-columns", "txn_id", "--max-epochs", "2"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise RuntimeError(f"training the benchmark's model failed: {r.stderr.strip().splitlines()[-1:]}")
    return {"one": one, "missing": missing}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cli", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="timed runs of each case (default: 3)")
    p.add_argument("--cases", default=",".join(TARGETS_S), help="comma-separated cases (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cli.json")
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(TARGETS_S))
    if unknown or args.runs < 1:
        p.error(f"unknown case(s) {unknown}; cases are {list(TARGETS_S)}" if unknown else "--runs must be >= 1")

    with tempfile.TemporaryDirectory(prefix="vae-anomaly-bench-cli-") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))}
        env |= {"VAE_ANOMALY_HOME": str(work), "PREFECT_HOME": str(work / ".prefect")}
        needs_model = any(c != "help" and c != "missing-file" for c in cases)
        files = prepare(work, env) if needs_model else {"one": work / "one.csv", "missing": work / "none.csv"}
        score = [sys.executable, "-m", "flows.score", "--out", str(work / "reports")]
        model = ["--model", f"models:/{MODEL}@champion"]
        commands = {
            "help": ([*score, "--help"], 0),
            "missing-file": ([*score, str(work / "no-such-file.csv"), *model], 2),
            "missing-column": ([*score, str(files["missing"]), *model], 2),
            "unknown-alias": ([*score, str(files["one"]), "--model", f"models:/{MODEL}@nope"], 3),
            "score-1-row": ([*score, str(files["one"]), *model], 0),
            "score-1-row-server": ([*score, str(files["one"]), *model], 0),
        }
        results: dict[str, Any] = {}
        server = None
        try:
            for case in cases:
                cmd, expected = commands[case]
                case_env = env
                if case == "score-1-row-server":
                    server, url = start_prefect_server(env, work)
                    case_env = {**env, "PREFECT_API_URL": url}
                r = timed(cmd, case_env, args.runs)
                r |= {"target_s": TARGETS_S[case], "expected_exit": expected}
                r["ok"] = r["exit_codes"] == [expected]
                r["meets_target"] = r["ok"] and r["median_s"] <= TARGETS_S[case]
                results[case] = r
                print(f"{case}: median {r['median_s']:.2f}s (target {TARGETS_S[case]:g}s), exit {r['exit_codes']}")
            parts = {
                "import_prefect_mlflow_torch": timed([sys.executable, "-c", "import prefect, mlflow, torch"], env, 1),
                "python_start": timed([sys.executable, "-c", "pass"], env, 1),
            }
            if any(c.startswith("score-1-row") for c in cases):
                parts["trivial_flow_ephemeral"] = timed([sys.executable, "-c", TRIVIAL_FLOW], env, args.runs)
                if server is not None:
                    parts["trivial_flow_server"] = timed(
                        [sys.executable, "-c", TRIVIAL_FLOW], {**env, "PREFECT_API_URL": url}, args.runs
                    )
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
    out = {
        "benchmark": "cli",
        "command": "python -m benchmarks.cli " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": args.runs,
        "cases": results,
        "breakdown": {k: v["median_s"] for k, v in parts.items()},
        "machine": {"cpu": cpu_name(), "cpus_available": available_cpus(), "python": sys.version.split()[0]},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(out, indent=1))
    tmp_out.replace(args.out)
    print(f"results: {args.out}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
