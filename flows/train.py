"""``train`` flow: read a table, fit the VAE detector, calibrate, log to MLflow, register, set alias.

python -m flows.train --data data/demo/train.csv --model-name vae-anomaly --id-columns txn_id
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows import tracking
from flows.cli import ArgumentParser, csv_list, flow_failure, print_registered, run
from flows.config import TrainConfig
from flows.outcome import UserError, user_errors
from pipeline.calibrate import check_alpha
from pipeline.detector import VAEAnomalyDetector
from pipeline.errors import InputError
from pipeline.io import read_table
from pipeline.schema import most_extreme
from pipeline.scoring import score_features
from pipeline.split import MIN_ROWS
from vae.config import TrainConfig as TrainerConfig


@task(cache_policy=NO_CACHE)
def load_training_data(config: TrainConfig) -> pd.DataFrame | UserError:
    try:
        df = read_table(config.data, str_columns=config.id_columns)
        check_enough_rows(len(df), config.alpha, str(config.data), config.segment_column)
        return df
    except user_errors() as e:
        return UserError.of(e)


def check_enough_rows(n: int, alpha: float, source: str, segment_column: str | None = None) -> None:
    """Refuse a table too small for ``alpha`` before training (the detector's own rule), saying how many rows
    it needs.

    Raises:
        InputError: fewer rows than the conformal threshold at ``alpha`` needs.
    """
    check_alpha(alpha)
    if n < MIN_ROWS:
        raise InputError(f"{source}: {n} rows, but training needs at least {MIN_ROWS}: give more rows")
    try:
        VAEAnomalyDetector(alpha=alpha, segment_column=segment_column).calibration_rule(n)
    except InputError as e:
        raise InputError(f"{source}: {e}") from e


def trainer_config(config: TrainConfig) -> TrainerConfig:
    """The trainer's defaults, overridden by what the flow's config sets."""
    given = {"max_epochs": config.max_epochs, "batch_size": config.batch_size}
    return TrainerConfig(
        seed=config.seed,
        device=config.device,
        trim_fraction=config.trim_fraction,
        **{k: v for k, v in given.items() if v is not None},
    )


@task(cache_policy=NO_CACHE)
def fit_detector(df: pd.DataFrame, config: TrainConfig) -> VAEAnomalyDetector | UserError:
    det = VAEAnomalyDetector(
        alpha=config.alpha,
        id_columns=config.id_columns,
        label_column=config.label_column,
        categorical_columns=config.categorical_columns,
        segment_column=config.segment_column,
        latent_dim=config.latent_dim,
        seed=config.seed,
        train_config=trainer_config(config),
    )
    try:
        det.fit(df)
        if not np.isfinite(det.calibration_scores_).all():  # a calibration row's score overflowed
            source = str(config.data)
            score_features(det, det.schema_.validate(df, source=source, require_ids=False), source)  # names it
            raise InputError(f"{source}: some calibration scores are not finite: remove extreme values")
        return det
    except user_errors() as e:
        return UserError.of(e)
    except FloatingPointError as e:  # the loss overflowed: almost always a value far outside the rest
        return UserError.of(InputError(f"{config.data}: training failed ({e}){_extreme_hint(det, df)}"))


def _extreme_hint(det: VAEAnomalyDetector, df: pd.DataFrame) -> str:
    schema = getattr(det, "schema_", None)
    if schema is None:
        return ""
    where = most_extreme(schema.validate(df, source=""), schema.numeric)
    if where is None or where[3] < 1e6:  # nothing extreme: the hint would mislead
        return ""
    column, row, value, dist = where
    return (
        f": column {column!r} row {row} holds {value!r}, {dist:.3g} robust standard deviations from its "
        "median; remove or cap such values"
    )


@task(cache_policy=NO_CACHE)
def evaluate_labelled(det: VAEAnomalyDetector, df: pd.DataFrame) -> tuple[dict[str, float], np.ndarray | None]:
    """AUROC of labelled anomalies (kept out of training) against the calibration rows."""
    label = det.schema_.label_column
    if not label:
        return {}, None
    anomalies = df[pd.to_numeric(df[label], errors="coerce") == 1]
    if anomalies.empty:
        return {}, None
    from sklearn.metrics import roc_auc_score

    s_anom = det.score_samples(anomalies)
    s_cal = det.calibration_scores_
    y = np.r_[np.zeros(len(s_cal)), np.ones(len(s_anom))]
    return {
        "eval_auroc": float(roc_auc_score(y, np.r_[s_cal, s_anom])),
        "eval_recall_at_threshold": float(np.mean(s_anom > det.threshold_)),
    }, s_anom


@task(cache_policy=NO_CACHE)
def register_model(
    det: VAEAnomalyDetector,
    config: TrainConfig,
    eval_metrics: dict[str, float],
    anomaly_scores: np.ndarray | None,
) -> tracking.RegisteredVersion | UserError:
    try:
        tracking.setup(config.experiment)
        params = config.model_dump(mode="json", exclude={"model_name", "alias", "experiment"})
        params = {k: ("" if v is None else str(v)) for k, v in params.items()}
        return tracking.log_training_run(det, params, config.model_name, config.alias, eval_metrics, anomaly_scores)
    except user_errors() as e:
        return UserError.of(e)


@task(cache_policy=NO_CACHE)
def check_tracking(config: TrainConfig) -> UserError | None:
    """Reach the tracking server (and create the experiment) before spending time on training."""
    try:
        tracking.setup(config.experiment)
        return None
    except user_errors() as e:
        return UserError.of(e)


@flow(name="train", log_prints=True)
def train(config: TrainConfig) -> dict[str, Any]:
    """Train, calibrate and register a VAE anomaly detector; returns a summary."""
    df = load_training_data(config)
    if isinstance(df, UserError):
        return Failed(message=df.message, data=df)  # type: ignore[return-value]
    unreachable = check_tracking(config)
    if unreachable is not None:
        return Failed(message=unreachable.message, data=unreachable)  # type: ignore[return-value]
    det = fit_detector(df, config)
    if isinstance(det, UserError):
        return Failed(message=det.message, data=det)  # type: ignore[return-value]
    eval_metrics, anomaly_scores = evaluate_labelled(det, df)
    reg = register_model(det, config, eval_metrics, anomaly_scores)
    if isinstance(reg, UserError):
        return Failed(message=reg.message, data=reg)  # type: ignore[return-value]
    h = det.history_
    return {
        "model_name": reg.name,
        "version": reg.version,
        "alias": reg.alias,
        "model_uri": reg.model_uri,
        "run_id": reg.run_id,
        "threshold": det.threshold_,
        "alpha": det.alpha,
        "calibration": det.calibration_description(),
        **(
            {
                "segments": {v: len(c) for v, c in zip(det.segments_.values, det.segments_.calibration, strict=True)},
                "segments_pooled": det.segments_.small,
            }
            if det.segments_ is not None
            else {}
        ),
        **det.n_rows_,
        "epochs": len(h.train_loss),
        "best_epoch": h.best_epoch,
        "kl_weight": det.kl_weight_,
        "train_seconds": round(h.seconds, 2),
        "device": h.device,
        "tracking_uri": tracking.redact(tracking.tracking_uri()),
        **eval_metrics,
    }


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m flows.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="training table (CSV or Parquet)")
    p.add_argument("--model-name", default="vae-anomaly", help="registered model name (default: vae-anomaly)")
    p.add_argument("--alias", default="champion", help="alias for the new version (default: champion)")
    p.add_argument("--experiment", default="vae-anomaly", help="MLflow experiment (default: vae-anomaly)")
    p.add_argument("--id-columns", type=csv_list, default=[], help="comma-separated columns carried to reports")
    p.add_argument("--label-column", default=None, help="0/1 column (1 = anomaly), used only for evaluation")
    p.add_argument("--categorical-columns", type=csv_list, default=[], help="force these columns categorical")
    p.add_argument(
        "--segment-column",
        default=None,
        help="categorical column whose values (segments) each get their own threshold (default: one threshold)",
    )
    p.add_argument("--alpha", type=float, default=0.01, help="target false-positive rate (default: 0.01)")
    p.add_argument("--max-epochs", type=int, default=None, help="cap on epochs (default: the trainer's budget)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--latent-dim", type=int, default=None)
    p.add_argument(
        "--trim-fraction",
        type=float,
        default=0.0,
        help="training data holds some anomalies: leave this fraction of the worst-fitting rows of "
        "each batch out of training (default: 0)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(argv: list[str] | None = None) -> int:
    from flows.image_kind import split_kind

    kind, argv = split_kind(sys.argv[1:] if argv is None else list(argv))
    if kind == "image":  # --kind image, or an image input (folder, image file, glob, IDX)
        from flows.train_images import main as image_main

        return image_main(argv)
    args = build_parser().parse_args(argv)

    def body() -> int:
        config = TrainConfig(**{k: v for k, v in vars(args).items()})
        state = train(config, return_state=True)
        failed = flow_failure("python -m flows.train", state)
        if failed is not None:
            return failed
        print_registered(state.result())
        return 0

    return run("python -m flows.train", body)


if __name__ == "__main__":
    sys.exit(main())
