"""A real ``prefect server start`` on loopback, ``score-inbox`` served on an interval schedule: a file dropped
in the inbox gets its report from a scheduled run. Every process started here is stopped, also on failure."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.inbox.manifest import Manifest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST"
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def _wait(what: str, check: Callable[[], Any], timeout_s: float, procs: list[subprocess.Popen]) -> Any:
    """``check()``'s first truthy value; fails with ``what`` after ``timeout_s`` or when a process died."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if value := check():
                return value
        except OSError:
            pass  # not up yet
        dead = [p.args for p in procs if p.poll() is not None]
        assert not dead, f"exited early while waiting for {what}: {dead}"
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL what is left of it after 15 s; wait until the group is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group's children too (the runner's flow-run processes)
    proc.wait(timeout=10)
    deadline = time.time() + 10  # orphaned children are reaped by init, not at once
    while _group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.1)


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def test_served_score_inbox_scores_a_dropped_file_in_a_scheduled_run(registered_model, test_table, tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
    env.pop("PREFECT_API_URL", None)  # VAE_ANOMALY_HOME (the session's MLflow store) is inherited
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    logs = {name: tmp_path / f"{name}.log" for name in ("server", "serve")}
    procs: list[subprocess.Popen] = []
    try:
        with open(logs["server"], "w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                    env=env,
                    cwd=tmp_path,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        _wait("the Prefect server", lambda: _api(f"{api}/health") is True, 60, procs)
        serve_env = {
            **env,
            "PREFECT_API_URL": api,
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_HOME": str(tmp_path / "prefect-client"),
        }
        with open(logs["serve"], "w") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "flows.inbox",
                        "--inbox",
                        str(inbox),
                        "--outbox",
                        str(outbox),
                        "--model",
                        "models:/test-model@champion",
                        "--min-age",
                        "0.5",
                        "--interval",
                        "2",
                    ],
                    env=serve_env,
                    cwd=tmp_path,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        _wait(
            "the score-inbox deployment",
            lambda: _api(f"{api}/deployments/filter", {"deployments": {"name": {"any_": ["score-inbox"]}}}),
            30,
            procs,
        )
        df, _ = test_table
        df.head(40).to_csv(inbox / ".batch.csv.tmp", index=False)  # written under a hidden name, then renamed
        (inbox / ".batch.csv.tmp").rename(inbox / "batch.csv")
        report = outbox / "batch.anomalies.csv"
        _wait("the report", report.exists, 90, procs)
        [entry] = Manifest(outbox / "manifest.sqlite3").entries()
        run = _wait(
            "the flow run to complete",
            lambda: (r := _api(f"{api}/flow_runs/{entry.run_id}"))["state_type"] == "COMPLETED" and r,
            30,
            procs,
        )
        assert run["auto_scheduled"] is True and run["deployment_id"]  # created by the server's scheduler
        # the report is renamed into place before the manifest row is marked done: read the row again
        [entry] = Manifest(outbox / "manifest.sqlite3").entries()
        assert entry.status == "done" and entry.path == "batch.csv" and entry.report == str(report)
        assert len(report.read_text().splitlines()) == 41
        completed = _api(f"{api}/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
        assert entry.run_id in {r["id"] for r in completed}
    except BaseException:
        for name, path in logs.items():
            print(f"---- {name} log ----\n{_log_tail(path)}")
        raise
    finally:
        for proc in reversed(procs):  # the served flow (and its flow-run processes) first, then the server
            _stop(proc)
    for proc in procs:
        assert proc.poll() is not None and not _group_alive(proc.pid), proc.args  # nothing of its group is left
