"""MLflow: tracking set-up, logging a training run, registering and resolving models."""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flows.model_uri import parse_model_uri
from flows.settings import artifact_root, redact, tracking_uri
from pipeline.detector import VAEAnomalyDetector
from pipeline.errors import ModelError
from pipeline.plots import score_distribution

log = logging.getLogger(__name__)
PROJECT_DIR = Path(__file__).resolve().parents[1]
_REQUIREMENTS = ("torch", "numpy", "pandas", "scikit-learn", "pyarrow", "mlflow")


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached."""

    exit_code = 4


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    alias: str
    run_id: str
    model_uri: str


@dataclass
class ResolvedModel:
    detector: VAEAnomalyDetector
    uri: str
    name: str | None
    version: str | None


def setup(experiment: str | None = None) -> str:
    """Point MLflow at the configured store; create the experiment if needed. Returns the URI."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if experiment is not None:
        try:
            exp = mlflow.get_experiment_by_name(experiment)
            if exp is None:
                location = artifact_root().as_uri() if uri.startswith("sqlite:") else None
                mlflow.create_experiment(experiment, artifact_location=location)
            mlflow.set_experiment(experiment)
        except Exception as e:
            raise _translate(e, uri) from e
    return uri


def _translate(e: Exception, uri: str) -> Exception:
    """Connection failures, and answers that are not MLflow's, become TrackingUnavailable with a clean message.

    MLflow retries refused connections, timeouts and HTTP 408/429/5xx with exponential backoff
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``_BACKOFF_FACTOR``, set in flows.settings) before it raises.
    """
    text = f"{type(e).__name__}: {e}"
    if m := re.search(r"too many (\d{3}) error responses", text):
        retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "")
        return TrackingUnavailable(
            f"cannot reach the MLflow tracking server at {redact(uri)}: it answered "
            f"HTTP {m[1]} to every try ({retries} retries with backoff)"
        )
    if re.search(r"Connection|Max retries|timed out|refused|Name or service", text):
        return TrackingUnavailable(f"cannot reach the MLflow tracking server at {redact(uri)}")
    if answer := _not_mlflow_answer(e, text):
        status, what = answer
        if status in ("401", "403"):
            return TrackingUnavailable(
                f"the tracking server at {redact(uri)} refused the request ({what}): check "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"
            )
        return TrackingUnavailable(
            f"the server at {redact(uri)} is not an MLflow tracking server: {what}: check MLFLOW_TRACKING_URI"
        )
    return e


def _not_mlflow_answer(e: Exception, text: str) -> tuple[str, str] | None:
    """(HTTP status, what it answered) when an HTTP answer did not come from MLflow's REST API, else None.

    MLflow's server answers every REST error with JSON holding an ``error_code``; MLflow's client raises
    "API request to endpoint ... failed with error code 404 != 200" when the body is not JSON (another web
    server, a proxy page), and a RestException without ``error_code`` for foreign JSON (``{"detail": ...}``).
    """
    if m := re.search(r"API request to endpoint (\S+) failed with error code (\d{3})", text):
        return m[2], f"it answered HTTP {m[2]} to {m[1]} without MLflow's JSON error"
    if "API request to endpoint was successful but the response body was not in a valid JSON" in text:
        return "200", "it answered a REST call with a body that is not JSON"
    body = getattr(e, "json", None)
    if isinstance(body, dict) and "error_code" not in body:
        return "", f"it answered a REST call with JSON that is not MLflow's: {str(body)[:80]}"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return redact(text.splitlines()[0][:200] if text else type(e).__name__)


def _pip_requirements() -> list[str]:
    reqs = []
    for name in _REQUIREMENTS:
        try:
            v = metadata.version(name).split("+")[0]
            reqs.append(f"{name}=={v}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def _log_history(client: Any, run_id: str, det: VAEAnomalyDetector) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    h = det.history_
    metrics = [Metric("train_loss", v, now, i) for i, v in enumerate(h.train_loss)]
    metrics += [Metric("val_loss", v, now, i) for i, v in enumerate(h.val_loss)]
    for start in range(0, len(metrics), 900):
        client.log_batch(run_id, metrics=metrics[start : start + 900])


def log_training_run(
    det: VAEAnomalyDetector,
    params: dict[str, Any],
    model_name: str,
    alias: str,
    eval_metrics: dict[str, float],
    anomaly_scores: np.ndarray | None,
) -> RegisteredVersion:
    """Log params, per-epoch losses, metrics, schema, calibration and the pyfunc; register it; set alias."""
    import mlflow

    from flows.pyfunc import pyfunc_signature

    uri = mlflow.get_tracking_uri()
    try:
        with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
            client = mlflow.MlflowClient()
            h = det.history_
            mlflow.log_params(
                {
                    **params,
                    "hidden": str(det.model_config_.hidden),
                    "latent_dim_used": det.model_config_.latent_dim,
                    "batch_size_used": h.batch_size,
                    "score_method": det.score_method,
                    "n_draws": det.n_draws,
                    "kl_weight_used": det.kl_weight_,
                    "active_units": str(det.active_units_),
                    "calibration_rule": det.calibration_rule_,
                }
            )
            _log_history(client, run.info.run_id, det)
            cal = det.calibration_scores_
            mlflow.log_metrics(
                {
                    "best_val_loss": h.best_val_loss,
                    "best_epoch": h.best_epoch,
                    "epochs": len(h.train_loss),
                    "train_seconds": h.seconds,
                    "train_samples_per_s": h.samples_per_s,
                    "threshold": det.threshold_,
                    "n_train": det.n_rows_["train"],
                    "n_val": det.n_rows_["val"],
                    "n_cal": det.n_rows_["cal"],
                    "cal_score_median": float(np.median(cal)),
                    "cal_score_p99": float(np.quantile(cal, 0.99)),
                    **eval_metrics,
                }
            )
            mlflow.set_tag("device", h.device)
            mlflow.log_dict(det.schema_.to_dict(), "schema.json")
            mlflow.log_dict(
                {
                    "alpha": det.alpha,
                    "threshold": det.threshold_,
                    "n_cal": len(cal),
                    "calibration_rule": det.calibration_rule_,
                    "rule": det.calibration_description(),
                    "segments": None
                    if det.segments_ is None
                    else {
                        "column": det.segments_.column,
                        "calibration_rows": {
                            v: len(c) for v, c in zip(det.segments_.values, det.segments_.calibration, strict=True)
                        },
                        "thresholds": dict(zip(det.segments_.values, det.segments_.thresholds(det.alpha), strict=True)),
                        "pooled (too few calibration rows)": det.segments_.small,
                    },
                },
                "calibration/calibration.json",
            )
            cal_csv = Path(tmp) / "calibration_scores.csv"
            pd.DataFrame({"score": cal}).to_csv(cal_csv, index=False, float_format="%.9g")
            mlflow.log_artifact(str(cal_csv), "calibration")
            png = score_distribution(
                cal,
                det.threshold_,
                det.alpha,
                Path(tmp) / "score_distribution.png",
                other_scores=anomaly_scores,
                other_label="labelled anomalies",
                **(
                    {
                        "score_label": "cross-conformal score: out-of-fold normal scores a row exceeds (+ tie-break)",
                        "calibration_label": "calibration (the n normal rows' ranks 1..n",
                    }
                    if det.calibration_rule_ == "cross"
                    else {}
                ),
            )
            mlflow.log_artifact(str(png), "calibration")
            det_dir = det.save(Path(tmp) / "detector")
            with warnings.catch_warnings():  # MLflow's advice on type hints and input examples
                warnings.simplefilter("ignore", UserWarning)  # input columns: schema.json, not the signature
                info = _log_pyfunc(det_dir, pyfunc_signature("table"), model_name)
            version = str(info.registered_model_version)
            client.set_registered_model_alias(model_name, alias, version)
            client.set_model_version_tag(model_name, version, "threshold", f"{det.threshold_:.9g}")
            return RegisteredVersion(model_name, version, alias, run.info.run_id, f"models:/{model_name}@{alias}")
    except Exception as e:
        raise _translate(e, uri) from e


def _log_pyfunc(det_dir: Path, signature: Any, model_name: str) -> Any:
    import mlflow

    from flows.pyfunc import DETECTOR_ARTIFACT

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PROJECT_DIR / "flows" / "pyfunc_entry.py"),
        artifacts={DETECTOR_ARTIFACT: str(det_dir)},
        code_paths=[str(PROJECT_DIR / p) for p in ("vae", "pipeline", "flows")],
        pip_requirements=_pip_requirements(),
        signature=signature,
        registered_model_name=model_name,
    )


def _confined_source(client: Any, name: str, version: str) -> str:
    """The registry URI ``models:/NAME/VERSION`` to load, once the version's files are inside the store.

    A version registered from a local folder outside the store's artifact root (for the embedded store:
    ``<project>/mlartifacts``) is refused; a tracking server's proxied artifacts are inside by construction.

    Raises:
        ModelError: the version's files lie outside the artifact root.
    """
    from urllib.parse import unquote, urlparse

    location = client.get_model_version_download_uri(name, version)
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        local = Path(unquote(parsed.path) if parsed.scheme else location).resolve()
        root = artifact_root().resolve()
        if not local.is_relative_to(root):
            raise ModelError(
                f"model models:/{name}/{version} is stored at {local}, outside the store's artifact root "
                f"{root}: refused (models load only from the configured store)"
            )
    return f"models:/{name}/{version}"


def load_model(model_uri: str) -> ResolvedModel:
    """Resolve ``model_uri`` (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) in the configured registry
    and load its detector through the pyfunc; nothing outside the store is ever loaded.

    Raises:
        ModelError: another URI form, an unknown model name, alias or version, files outside the store,
            or missing artifacts.
        TrackingUnavailable: the tracking server cannot be reached.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(model_uri)
    uri = mlflow.get_tracking_uri()
    # MLflow prepends the model's code snapshot (code_paths) to sys.path: later imports in this process, and
    # Dask worker processes (which start with a copy of sys.path), would load that old copy of our packages.
    path = list(sys.path)
    try:
        client = mlflow.MlflowClient()
        if alias is not None:
            version = str(client.get_model_version_by_alias(name, alias).version)
        else:
            client.get_model_version(name, version)
        model = mlflow.pyfunc.load_model(_confined_source(client, name, str(version)))
    except MlflowException as e:
        t = _translate(e, uri)
        if isinstance(t, TrackingUnavailable):
            raise t from e
        raise ModelError(f"model {model_uri} not found in the registry at {redact(uri)}: {_first_line(e)}") from e
    except ModelError as e:
        raise ModelError(f"model {model_uri} cannot be loaded: {_first_line(e)}") from e
    except Exception as e:
        t = _translate(e, uri)
        if isinstance(t, TrackingUnavailable):
            raise t from e
        # a corrupt or foreign model folder: never a traceback, never the credentials of the URI
        raise ModelError(f"model {model_uri} cannot be loaded: {type(e).__name__}: {_first_line(e)}") from e
    finally:
        sys.path[:] = path
    python_model = model.unwrap_python_model()
    return ResolvedModel(python_model.detector, model_uri, name, version)


def log_scoring(summaries: list[dict[str, Any]], experiment: str) -> str:
    """One MLflow run per scoring run: per-file counts and threshold-health tests. Returns the run id."""
    import mlflow

    setup(experiment)
    first = summaries[0]
    with mlflow.start_run(run_name=f"score {first['model_name']} v{first['model_version']}") as run:
        mlflow.set_tags(
            {
                "model_uri": first["model_uri"],
                "model_name": str(first["model_name"]),
                "model_version": str(first["model_version"]),
                "rule": first["rule"],
            }
        )
        for i, s in enumerate(summaries):
            h = s["health"]
            mlflow.log_metrics(
                {
                    "rows": s["rows"],
                    "flagged": s["flagged"],
                    "flagged_fraction": s["flagged_fraction"],
                    "threshold": s["threshold"],
                    "binomial_pvalue": h["binomial_pvalue"],
                    "ks_statistic": h["ks_statistic"],
                    "ks_pvalue": h["ks_pvalue"],
                    "shift_warning": float(bool(h["warning"])),
                },
                step=i,
            )
            mlflow.log_dict(s, f"summaries/{i:04d}-{Path(s['input']).stem}.json")
        return run.info.run_id
