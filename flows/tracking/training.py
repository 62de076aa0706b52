"""MLflow: log a training run of either kind, register its pyfunc and set the alias."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flows.tracking.store import PROJECT_DIR, RegisteredVersion, translate

if TYPE_CHECKING:
    from pipeline.detect.training import Detector, TrainingData

log = logging.getLogger(__name__)
_REQUIREMENTS = ("torch", "numpy", "pandas", "scikit-learn", "pyarrow", "mlflow")
SAMPLE_IMAGES = 8  # training images in the reconstruction figure


def log_training_run(
    det: Detector,
    data: TrainingData,
    params: dict[str, Any],
    model_name: str,
    alias: str,
    eval_metrics: dict[str, float] | None = None,
    anomaly_scores: np.ndarray | None = None,
) -> RegisteredVersion:
    """Log params, per-epoch losses, metrics, calibration, figures and the pyfunc; register it; set the alias.

    Tables also log their schema (and labelled anomalies' scores on the score figure); images log prior
    samples and reconstructions of a few training images.

    Raises:
        TrackingUnavailable: the tracking server cannot be reached.
    """
    import mlflow

    from flows.pyfunc import pyfunc_signature

    uri = mlflow.get_tracking_uri()
    try:
        with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
            client = mlflow.MlflowClient()
            h = det.history_
            mlflow.log_params({**params, **_model_params(det)})
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
                    **(eval_metrics or {}),
                }
            )
            mlflow.set_tag("device", h.device)
            if data.notes:
                mlflow.set_tag("ingest_notes", "; ".join(data.notes)[:4000])
            if det.kind == "table":
                mlflow.log_dict(det.schema_.to_dict(), "schema.json")
            mlflow.log_dict(_calibration(det), "calibration/calibration.json")
            cal_csv = Path(tmp) / "calibration_scores.csv"
            pd.DataFrame({"score": cal}).to_csv(cal_csv, index=False, float_format="%.9g")
            mlflow.log_artifact(str(cal_csv), "calibration")
            mlflow.log_artifact(str(_score_figure(det, Path(tmp), anomaly_scores)), "calibration")
            for fig in _image_figures(det, data, Path(tmp)):
                mlflow.log_artifact(str(fig), "figures")
            det_dir = det.save(Path(tmp) / "detector")
            said = io.StringIO()  # MLflow prints "Successfully registered model ..." to stderr: log it instead
            with warnings.catch_warnings(), contextlib.redirect_stderr(said):
                warnings.simplefilter("ignore", UserWarning)  # MLflow's advice on type hints and input examples
                info = _log_pyfunc(det_dir, pyfunc_signature(det.kind), model_name)
            for line in said.getvalue().splitlines():
                log.info("%s", line)
            version = str(info.registered_model_version)
            client.set_registered_model_alias(model_name, alias, version)
            client.set_model_version_tag(model_name, version, "threshold", f"{det.threshold_:.9g}")
            if det.kind == "image":
                client.set_model_version_tag(model_name, version, "kind", "image")
            return RegisteredVersion(model_name, version, alias, run.info.run_id, f"models:/{model_name}@{alias}")
    except Exception as e:
        raise translate(e, uri) from e


def _model_params(det: Detector) -> dict[str, Any]:
    """What the fitted model settled on, beside the run's own options."""
    h = det.history_
    if det.kind == "image":
        cfg = det.config_
        return {
            "kind": "image",
            "image_mode": det.image_mode,
            "image_size": f"{cfg.height}x{cfg.width}",
            "conv_channels": str(cfg.conv_channels),
            "hidden": cfg.hidden,
            "batch_size_used": h.batch_size,
        }
    return {
        "hidden": str(det.model_config_.hidden),
        "latent_dim_used": det.model_config_.latent_dim,
        "batch_size_used": h.batch_size,
        "score_method": det.score_method,
        "n_draws": det.n_draws,
        "kl_weight_used": det.kl_weight_,
        "active_units": str(det.active_units_),
        "calibration_rule": det.calibration_rule_,
    }


def _calibration(det: Detector) -> dict[str, Any]:
    out: dict[str, Any] = {"alpha": det.alpha, "threshold": det.threshold_, "n_cal": len(det.calibration_scores_)}
    if det.kind == "image":
        return {**out, "rule": "split-conformal: k-th smallest calibration score, k=ceil((n+1)(1-alpha))"}
    seg = det.segments_
    return {
        **out,
        "calibration_rule": det.calibration_rule_,
        "rule": det.calibration_description(),
        "segments": None
        if seg is None
        else {
            "column": seg.column,
            "calibration_rows": seg.calibration_rows(),
            "thresholds": dict(zip(seg.values, seg.thresholds(det.alpha), strict=True)),
            "pooled (too few calibration rows)": seg.small,
        },
    }


def _score_figure(det: Detector, folder: Path, anomaly_scores: np.ndarray | None) -> Path:
    from pipeline.score.plots import score_distribution

    labels = (
        {
            "score_label": "cross-conformal score: out-of-fold normal scores a row exceeds (+ tie-break)",
            "calibration_label": "calibration (the n normal rows' ranks 1..n",
        }
        if getattr(det, "calibration_rule_", "split") == "cross"
        else {}
    )
    return score_distribution(
        det.calibration_scores_,
        det.threshold_,
        det.alpha,
        folder / "score_distribution.png",
        other_scores=anomaly_scores,
        other_label="labelled anomalies",
        **labels,
    )


def _image_figures(det: Detector, data: TrainingData, folder: Path) -> list[Path]:
    """Prior samples and reconstructions of a few training images (image models only)."""
    if data.images is None:
        return []
    from pipeline.score.image_plots import image_grid, reconstruction_pairs

    k = min(SAMPLE_IMAGES, len(data.images.pixels))
    sample, names = data.images.pixels[:k], data.images.paths[:k]
    recon, _ = det.reconstruct(sample)
    return [
        image_grid(det.sample(32, seed=0), folder / "prior_samples.png", "samples decoded from the prior z ~ N(0, I)"),
        reconstruction_pairs(sample, recon, det.score_samples(sample), names, folder / "train_reconstructions.png"),
    ]


def _log_history(client: Any, run_id: str, det: Detector) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    h = det.history_
    metrics = [Metric("train_loss", v, now, i) for i, v in enumerate(h.train_loss)]
    metrics += [Metric("val_loss", v, now, i) for i, v in enumerate(h.val_loss)]
    for start in range(0, len(metrics), 900):
        client.log_batch(run_id, metrics=metrics[start : start + 900])


def _pip_requirements() -> list[str]:
    reqs = []
    for name in _REQUIREMENTS:
        try:
            v = metadata.version(name).split("+")[0]
            reqs.append(f"{name}=={v}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


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
