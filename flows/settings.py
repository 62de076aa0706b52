"""Where the embedded MLflow store and Prefect state live, and environment defaults."""

from __future__ import annotations

import os
import re
from pathlib import Path

# Defaults only: a value the user has set in the environment always wins.
_ENV_DEFAULTS = {
    # Prefect: no telemetry look-up; a generous start-up timeout for the ephemeral API on a loaded machine.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # MLflow: no telemetry; fail within about a minute when a tracking server is unreachable.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",  # per connect/read, not per transfer: 4 tries fail in < 1 min
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}


def project_root() -> Path:
    """The folder that holds the embedded stores: $VAE_ANOMALY_HOME, else this checkout, else cwd."""
    env = os.environ.get("VAE_ANOMALY_HOME")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() else Path.cwd().resolve()


def apply_env_defaults() -> None:
    """Set the defaults above, and PREFECT_HOME inside the project, where unset."""
    for k, v in _ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str(project_root() / ".prefect"))


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the embedded SQLite store ``<project>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_root() -> Path:
    """Artifact folder of experiments created on the embedded store."""
    return project_root() / "mlartifacts"


def redact(text: str) -> str:
    """``text`` with URL credentials (``//user:password@``) and secret query values replaced by ***.

    Works on a bare URI or on a message that contains URIs.
    """
    text = re.sub(r"//[^/\s'\"]*@", "//***@", text)
    return re.sub(r"(?i)([?&](?:password|passwd|token|secret|key|access_token|sig)=)[^&\s'\"]+", r"\1***", text)
