"""A tracking URI that is not a working MLflow server: a foreign web server (404), refused credentials, a server
that answers 503 (retried with backoff); each is one line naming the URI without its credentials, exit 4."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest

from flows import tracking
from flows.tracking import TrackingUnavailable
from tests.conftest import cli_env, make_table

ALIAS_ENDPOINT = "/api/2.0/mlflow/registered-models/alias"


class _Server:
    """A loopback web server that is not MLflow: every request gets ``status`` and ``body``; it keeps request times."""

    def __init__(self, status: int, body: bytes, content_type: str = "text/html") -> None:
        self.times: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.times.append(time.monotonic())
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def foreign_server(request: pytest.FixtureRequest) -> Iterator[_Server]:
    server = _Server(*request.param)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def tracking_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Point MLflow at a URI for one test; the session's store is restored afterwards."""
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()

    def point(uri: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.setup()

    yield point
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def harness_env(home: Path, tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess that reuses the session's Prefect test server (no start-up of its own)."""
    return cli_env(home, **extra)


@pytest.mark.parametrize("foreign_server", [(404, b"<!DOCTYPE HTML><title>Not Found</title>")], indirect=True)
def test_a_web_server_that_is_not_mlflow_exits_4_naming_the_uri(
    foreign_server, prefect_harness, session_home, tmp_path
):
    src = tmp_path / "batch.csv"
    make_table(5)[0].to_csv(src, index=False)
    env = harness_env(session_home, tmp_path, MLFLOW_TRACKING_URI=f"http://user:secret@127.0.0.1:{foreign_server.port}")
    r = subprocess.run(
        [sys.executable, "-m", "flows.score", str(src), "--model", "models:/m@champion", "--out", str(tmp_path / "o")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 4, r.stderr  # before: 3, "model models:/m@champion not found in the registry"
    errors = [line for line in r.stderr.splitlines() if line.startswith("python -m flows.score: error:")]
    assert errors == [
        f"python -m flows.score: error: the server at http://***@127.0.0.1:{foreign_server.port} is "
        f"not an MLflow tracking server: it answered HTTP 404 to {ALIAS_ENDPOINT} without MLflow's "
        "JSON error: check MLFLOW_TRACKING_URI"
    ]
    assert "secret" not in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("foreign_server", "message"),
    [
        (
            (404, b'{"detail": "Not Found"}', "application/json"),
            "is not an MLflow tracking server: it answered a REST call with JSON that is not MLflow's: "
            "{'detail': 'Not Found'}: check MLFLOW_TRACKING_URI",
        ),
        (
            (401, b"You are not authenticated.", "text/plain"),
            f"refused the request (it answered HTTP 401 to {ALIAS_ENDPOINT} without MLflow's JSON error): check "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN",
        ),
    ],
    indirect=["foreign_server"],
)
def test_foreign_answers_are_tracking_errors_not_model_errors(foreign_server, message, tracking_at):
    uri = f"http://user:secret@127.0.0.1:{foreign_server.port}"
    tracking_at(uri)
    with pytest.raises(TrackingUnavailable) as e:
        tracking.load_model("models:/m@champion")
    assert str(e.value).endswith(message) and f"127.0.0.1:{foreign_server.port}" in str(e.value)
    assert "secret" not in str(e.value) and e.value.exit_code == 4


@pytest.mark.parametrize("foreign_server", [(503, b"Service Unavailable")], indirect=True)
def test_a_server_that_is_down_is_retried_with_backoff_then_fails_clearly(foreign_server, tracking_at):
    # The product's defaults (flows.settings): 3 retries, backoff factor 1, i.e. waits of 0, 2 and 4 s
    # (urllib3: factor * 2 ** (n - 1) from the second retry on) plus MLflow's jitter of up to 1 s each.
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    tracking_at(f"http://127.0.0.1:{foreign_server.port}")
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailable) as e:
        tracking.load_model("models:/m@champion")
    assert time.monotonic() - t0 < 30
    assert str(e.value) == (
        f"cannot reach the MLflow tracking server at http://127.0.0.1:{foreign_server.port}: "
        "it answered HTTP 503 to every try (3 retries with backoff)"
    )
    gaps = [b - a for a, b in zip(foreign_server.times, foreign_server.times[1:], strict=False)]
    assert len(foreign_server.times) == 4, gaps  # the first try and 3 retries
    assert gaps[1] >= 1.9 and gaps[2] >= 3.9 and gaps[2] > gaps[1] > gaps[0], gaps  # exponential backoff
