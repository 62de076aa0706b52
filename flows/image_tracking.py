"""MLflow for image models: log a training run, register the pyfunc, log scoring and explore outputs.

It reuses flows.tracking (set-up, error translation, the pyfunc logged from code) so image and table
models share one registry and one loading path (``tracking.load_model``).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flows import tracking
from pipeline.image_detector import ImageVAEDetector
from pipeline.image_plots import image_grid, reconstruction_pairs
from pipeline.plots import score_distribution


def log_image_training_run(
    det: ImageVAEDetector,
    params: dict[str, Any],
    model_name: str,
    alias: str,
    sample: np.ndarray,
    sample_names: Sequence[str],
    notes: Sequence[str] = (),
) -> tracking.RegisteredVersion:
    """Log params, losses, metrics, calibration, prior samples and reconstructions; register; set the alias.

    Args:
        sample: (k, C, H, W) a few training images for the reconstruction figure.
    """
    import mlflow

    from flows.pyfunc import pyfunc_signature

    uri = mlflow.get_tracking_uri()
    try:
        with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
            client = mlflow.MlflowClient()
            h = det.history_
            cfg = det.config_
            mlflow.log_params(
                {
                    **params,
                    "kind": "image",
                    "image_mode": det.image_mode,
                    "image_size": f"{cfg.height}x{cfg.width}",
                    "conv_channels": str(cfg.conv_channels),
                    "hidden": cfg.hidden,
                    "batch_size_used": h.batch_size,
                }
            )
            tracking._log_history(client, run.info.run_id, det)
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
                }
            )
            mlflow.set_tag("device", h.device)
            if notes:
                mlflow.set_tag("ingest_notes", "; ".join(notes)[:4000])
            mlflow.log_dict(
                {
                    "alpha": det.alpha,
                    "threshold": det.threshold_,
                    "n_cal": len(cal),
                    "rule": "split-conformal: k-th smallest calibration score, k=ceil((n+1)(1-alpha))",
                },
                "calibration/calibration.json",
            )
            cal_csv = Path(tmp) / "calibration_scores.csv"
            pd.DataFrame({"score": cal}).to_csv(cal_csv, index=False, float_format="%.9g")
            mlflow.log_artifact(str(cal_csv), "calibration")
            mlflow.log_artifact(
                str(score_distribution(cal, det.threshold_, det.alpha, Path(tmp) / "score_distribution.png")),
                "calibration",
            )
            mlflow.log_artifact(
                str(
                    image_grid(
                        det.sample(32, seed=0),
                        Path(tmp) / "prior_samples.png",
                        "samples decoded from the prior z ~ N(0, I)",
                    )
                ),
                "figures",
            )
            recon, _ = det.reconstruct(sample)
            mlflow.log_artifact(
                str(
                    reconstruction_pairs(
                        sample, recon, det.score_samples(sample), sample_names, Path(tmp) / "train_reconstructions.png"
                    )
                ),
                "figures",
            )
            det_dir = det.save(Path(tmp) / "detector")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                info = tracking._log_pyfunc(det_dir, pyfunc_signature("image"), model_name)
            version = str(info.registered_model_version)
            client.set_registered_model_alias(model_name, alias, version)
            client.set_model_version_tag(model_name, version, "threshold", f"{det.threshold_:.9g}")
            client.set_model_version_tag(model_name, version, "kind", "image")
            return tracking.RegisteredVersion(
                model_name, version, alias, run.info.run_id, f"models:/{model_name}@{alias}"
            )
    except Exception as e:
        raise tracking._translate(e, uri) from e


def log_files(run_id: str, files: Sequence[str | Path], artifact_path: str) -> list[str]:
    """Log files to a (possibly finished) run; returns their artifact URIs."""
    import mlflow

    client = mlflow.MlflowClient()
    base = client.get_run(run_id).info.artifact_uri.rstrip("/")
    uris = []
    for f in files:
        client.log_artifact(run_id, str(f), artifact_path)
        uris.append(f"{base}/{artifact_path}/{Path(f).name}")
    return uris


def log_explore_run(
    command: str, model_uri: str, files: Sequence[Path], params: dict[str, Any], experiment: str = "vae-anomaly-explore"
) -> str:
    """One MLflow run per explore command, holding the files it wrote. Returns the run id."""
    import mlflow

    tracking.setup(experiment)
    with mlflow.start_run(run_name=f"explore {command}") as run:
        mlflow.set_tags({"model_uri": model_uri, "command": command})
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for f in files:
            mlflow.log_artifact(str(f), command)
        return run.info.run_id
