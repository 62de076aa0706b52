"""``train`` flow and its tasks: fit, calibrate and register a detector for a table or for images.

The command line is ``python -m flows.train`` (flows/train.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import tracking
from flows.config import TrainConfig
from pipeline.detect.training import Detector, TrainingData, fit, read_training_data, training_summary
from pipeline.detect.training import evaluate_labelled as evaluate


@task(cache_policy=NO_CACHE)
def load_training_data(det: Detector, config: TrainConfig) -> TrainingData:
    return read_training_data(det, config.data, config.normal_label)


@task(cache_policy=NO_CACHE, **tracking.RETRIES)
def check_tracking(experiment: str) -> None:
    """Reach the tracking server (and create the experiment) before spending time on training."""
    tracking.setup(experiment)


@task(cache_policy=NO_CACHE)
def fit_detector(det: Detector, data: TrainingData) -> tuple[Detector, float]:
    """The fitted ``det`` and the fit's wall time in seconds."""
    return det, fit(det, data)


@task(cache_policy=NO_CACHE)
def evaluate_labelled(det: Detector, data: TrainingData) -> tuple[dict[str, float], np.ndarray | None]:
    return evaluate(det, data)


@task(cache_policy=NO_CACHE, **tracking.RETRIES)
def register_model(
    det: Detector,
    data: TrainingData,
    config: TrainConfig,
    eval_metrics: dict[str, float],
    anomaly_scores: np.ndarray | None,
) -> tracking.RegisteredVersion:
    tracking.setup(config.experiment)
    return tracking.log_training_run(
        det, data, config.params(), str(config.model_name), config.alias, eval_metrics, anomaly_scores
    )


@flow(name="train", log_prints=True)
def train(config: TrainConfig) -> dict[str, Any]:
    """Train, calibrate and register a VAE anomaly detector for a table or for images; returns a summary."""
    det = config.detector()
    data = load_training_data(det, config)
    check_tracking(config.experiment)
    det, seconds = fit_detector(det, data)
    eval_metrics, anomaly_scores = evaluate_labelled(det, data)
    reg = register_model(det, data, config, eval_metrics, anomaly_scores)
    return {
        "kind": config.kind,
        "model_name": reg.name,
        "version": reg.version,
        "alias": reg.alias,
        "model_uri": reg.model_uri,
        "run_id": reg.run_id,
        **training_summary(det, data, seconds),
        "tracking_uri": tracking.redact(tracking.tracking_uri()),
        **eval_metrics,
    }
