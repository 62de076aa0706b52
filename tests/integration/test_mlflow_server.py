"""A real ``mlflow server`` on loopback (SQLite backend, artifact proxy): train -> register -> score through the CLIs
against it, then ``mlflow models serve`` of the champion answers ``/invocations`` with the report's scores.

Every process the test starts runs in its own process group and is stopped in ``finally``, also on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from benchmarks.rest import free_port, start, stop, wait_http
from tests.conftest import make_table
from tests.flows.test_tracking_errors import harness_env

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
MODEL = "server-model"


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for p in reversed(started):
            stop(p)


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return r


def test_train_register_score_and_serve_against_a_real_mlflow_server(
    prefect_harness, session_home, tmp_path, processes
):
    port, serve_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    base_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    server_env = {**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    (tmp_path / "server").mkdir()
    server_log = tmp_path / "server" / "server.log"
    processes.append(
        start(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}",
                "--artifacts-destination",
                str(tmp_path / "server" / "artifacts"),
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            server_log,
            server_env,
        )
    )

    train_df = make_table(300, seed=21)[0]
    batch, _ = make_table(40, seed=22, anomalies=4)
    train_df.to_csv(tmp_path / "train.csv", index=False)
    batch.to_csv(tmp_path / "batch.csv", index=False)
    # The clients work in an empty folder with an empty VAE_ANOMALY_HOME: nothing can come from a local store.
    home = tmp_path / "client-home"
    env = harness_env(home, tmp_path, MLFLOW_TRACKING_URI=url)
    wait_http(f"{url}/health", processes[0], server_log)

    cli(
        [
            "-m",
            "flows.train",
            "--data",
            str(tmp_path / "train.csv"),
            "--model-name",
            MODEL,
            "--id-columns",
            "id",
            "--alpha",
            "0.1",
            "--max-epochs",
            "3",
        ],
        env,
        tmp_path,
    )
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    version = client.get_model_version_by_alias(MODEL, "champion").version
    assert str(version) == "1"
    assert list((tmp_path / "server" / "artifacts").rglob("weights.pt"))  # uploaded through the artifact proxy
    assert not (home / "mlflow.db").exists()

    # The REST server starts while the score CLI runs (both only read the registry).
    serve_log = tmp_path / "serve.log"
    processes.append(
        start(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{MODEL}@champion",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(serve_port),
            ],
            serve_log,
            {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"},
        )
    )
    r = cli(
        [
            "-m",
            "flows.score",
            str(tmp_path / "batch.csv"),
            "--model",
            f"models:/{MODEL}@champion",
            "--out",
            str(tmp_path / "out"),
        ],
        env,
        tmp_path,
    )
    assert f"model {MODEL} v1" in r.stdout
    report = pd.read_csv(tmp_path / "out" / "batch.anomalies.csv", dtype=str, keep_default_na=False)
    assert len(report) == len(batch) and report["id"].tolist() == batch["id"].tolist()
    summary = json.loads((tmp_path / "out" / "batch.summary.json").read_text())
    assert summary["model_version"] == "1" and summary["rows"] == len(batch)
    [run] = client.search_runs([client.get_experiment_by_name("vae-anomaly-scoring").experiment_id])
    assert run.data.tags["model_version"] == "1" and run.data.metrics["rows"] == len(batch)

    wait_http(f"http://127.0.0.1:{serve_port}/ping", processes[1], serve_log, timeout=90)
    payload = json.dumps({"dataframe_split": json.loads(batch.to_json(orient="split", index=False))}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{serve_port}/invocations", data=payload, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        predictions = pd.DataFrame(json.loads(resp.read())["predictions"])
    assert list(predictions.columns) == ["score", "threshold", "is_anomaly"] and len(predictions) == len(batch)
    # JSON floats are float64 round-trip exact; the report prints %.9g: formatted alike, they are the same text.
    assert [f"{v:.9g}" for v in predictions["score"]] == report["score"].tolist()
    assert [f"{v:.9g}" for v in predictions["threshold"]] == report["threshold"].tolist()
    assert predictions["is_anomaly"].astype(str).tolist() == report["is_anomaly"].tolist()
    csv_req = urllib.request.Request(
        f"http://127.0.0.1:{serve_port}/invocations",
        headers={"Content-Type": "text/csv"},
        data=(tmp_path / "batch.csv").read_bytes(),
    )  # the file itself, as curl sends it
    with urllib.request.urlopen(csv_req, timeout=60) as resp:
        assert pd.DataFrame(json.loads(resp.read())["predictions"]).equals(predictions)

    with pytest.raises(urllib.error.HTTPError) as bad:  # a missing column is a 400 naming it, not a crash
        urllib.request.urlopen(
            urllib.request.Request(
                f"http://127.0.0.1:{serve_port}/invocations",
                headers={"Content-Type": "application/json"},
                data=json.dumps({"dataframe_split": {"columns": ["a"], "data": [[1.0]]}}).encode(),
            ),
            timeout=60,
        )
    assert bad.value.code == 400 and "b" in bad.value.read().decode()
