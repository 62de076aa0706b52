"""``retrain`` flow: train a challenger on new data, compare it with the champion, promote it only when better.

    python -m flows.retrain data/new.csv --model-name vae-anomaly [--label-column is_fraud] [--holdout-fraction 0.2]

Both models are evaluated on the same held-out rows of the new data (never used to train the challenger); the
promotion rule is in ``pipeline/compare.py``. The challenger is always registered (alias ``challenger``); the
``champion`` alias moves to it only on promotion. Every decision is a run in the MLflow experiment
``vae-anomaly-retrain`` and tags on both model versions.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows import tracking
from flows.cli import ArgumentParser, csv_list, flow_failure, run
from flows.config import RetrainConfig
from flows.outcome import UserError, user_errors
from flows.settings import redact
from flows.train import (
    check_enough_rows,
    evaluate_labelled,
    fit_detector,
    load_training_data,
    register_model,
)
from pipeline.compare import Decision, Evaluation, decide, evaluate, holdout_split
from pipeline.detector import VAEAnomalyDetector
from pipeline.errors import ModelError


class Parts(NamedTuple):
    train: pd.DataFrame
    holdout: pd.DataFrame


@task(cache_policy=NO_CACHE)
def split_new_data(df: pd.DataFrame, config: RetrainConfig) -> Parts | UserError:
    """Hold out rows to compare the models on; check that the rest can still train a challenger."""
    try:
        train_part, holdout = holdout_split(df, config.label_column, config.holdout_fraction, config.seed)
        check_enough_rows(
            len(train_part),
            config.alpha,
            f"{config.data} (after holding out {config.holdout_fraction:.0%} of its normal rows)",
            config.segment_column,
        )
        return Parts(train_part, holdout)
    except user_errors() as e:
        return UserError.of(e)


@task(cache_policy=NO_CACHE)
def load_champion(config: RetrainConfig) -> tracking.ResolvedModel | UserError | None:
    """The champion version (pinned by number), or None when the model or its champion alias does not exist yet."""
    try:
        tracking.setup()
        version = alias_version(config.model_name, config.champion_alias)
        return None if version is None else tracking.load_model(f"models:/{config.model_name}/{version}")
    except user_errors() as e:
        return UserError.of(e)


@task(cache_policy=NO_CACHE)
def evaluate_model(
    det: VAEAnomalyDetector, holdout: pd.DataFrame, config: RetrainConfig, who: str
) -> Evaluation | UserError:
    try:
        return evaluate(det, holdout, config.label_column, source=f"{config.data} (held-out rows, {who})")
    except user_errors() as e:
        return UserError.of(e)


@task(cache_policy=NO_CACHE)
def record_decision(
    config: RetrainConfig,
    champion: tracking.ResolvedModel | None,
    challenger_version: str,
    evals: dict[str, Evaluation | None],
    decision: Decision,
) -> str | UserError:
    """Log the decision run, move the champion alias on promotion, tag both versions. Returns the run id."""
    try:
        return log_decision(config, None if champion is None else champion.version, challenger_version, evals, decision)
    except user_errors() as e:
        return UserError.of(e)


def alias_version(name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None when the registered model or the alias does not exist.

    Raises:
        TrackingUnavailable: the tracking server cannot be reached.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.MlflowClient().get_registered_model(name)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise tracking._translate(e, mlflow.get_tracking_uri()) from e
    except Exception as e:
        raise tracking._translate(e, mlflow.get_tracking_uri()) from e
    version = model.aliases.get(alias)
    return None if version is None else str(version)


def log_decision(
    config: RetrainConfig,
    champion_version: str | None,
    challenger_version: str,
    evals: dict[str, Evaluation | None],
    decision: Decision,
) -> str:
    """One run in ``config.decision_experiment`` with both evaluations, the rule and the outcome; the alias
    move (``set_registered_model_alias`` is one atomic update in the registry); tags on both versions.

    Raises:
        ModelError: the champion alias moved to another version while this flow ran (nothing is changed).
        TrackingUnavailable: the tracking server cannot be reached.
    """
    import mlflow

    name, uri = config.model_name, mlflow.get_tracking_uri()
    outcome = "promoted" if decision.promote else "kept"
    try:
        tracking.setup(config.decision_experiment)
        client = mlflow.MlflowClient()
        with mlflow.start_run(
            run_name=f"retrain {name}: v{challenger_version} vs "
            f"{'none' if champion_version is None else 'v' + champion_version}"
        ) as run:
            mlflow.log_params(
                {
                    "model_name": name,
                    "champion_version": champion_version or "",
                    "challenger_version": challenger_version,
                    "data": str(config.data),
                    "label_column": config.label_column or "",
                    "holdout_fraction": config.holdout_fraction,
                    "margin": config.margin,
                    "level": config.level,
                    "rule": decision.rule,
                }
            )
            for who, e in evals.items():
                if e is not None:
                    mlflow.log_metrics({f"{who}_{k}": float(v) for k, v in e.to_dict().items() if v is not None})
            mlflow.log_dict(
                {
                    "decision": decision.to_dict(),
                    "champion_version": champion_version,
                    "challenger_version": challenger_version,
                    "evaluations": {k: (v.to_dict() if v else None) for k, v in evals.items()},
                },
                "decision.json",
            )
            mlflow.set_tags({"outcome": outcome, "rule": decision.rule, "reason": decision.reason[:5000]})
            if decision.promote:
                now = alias_version(name, config.champion_alias)
                if now != champion_version:
                    mlflow.set_tag("outcome", "not applied: the champion moved")
                    raise ModelError(
                        f"the {config.champion_alias} alias of {name} moved to v{now} while this retrain "
                        f"compared against v{champion_version}: nothing changed, run it again"
                    )
                client.set_registered_model_alias(name, config.champion_alias, challenger_version)
            tags = {
                "retrain.outcome": outcome,
                "retrain.rule": decision.rule,
                "retrain.reason": decision.reason[:5000],
                "retrain.run_id": run.info.run_id,
                "retrain.champion_version": champion_version or "",
            }
            for k, v in tags.items():
                client.set_model_version_tag(name, challenger_version, k, v)
            if champion_version is not None:
                client.set_model_version_tag(
                    name,
                    champion_version,
                    "retrain.last_challenge",
                    f"v{challenger_version} {outcome} (run {run.info.run_id})",
                )
            return run.info.run_id
    except ModelError:
        raise
    except Exception as e:
        raise tracking._translate(e, uri) from e


@flow(name="retrain", log_prints=True)
def retrain(config: RetrainConfig) -> dict[str, Any]:
    """Train a challenger on ``config.data``, compare it with the champion on held-out rows, promote if better."""
    df = load_training_data(config)
    if isinstance(df, UserError):
        return _fail(df)
    parts = split_new_data(df, config)
    if isinstance(parts, UserError):
        return _fail(parts)
    champion = load_champion(config)  # before training: a missing server or a schema change fails fast
    if isinstance(champion, UserError):
        return _fail(champion)
    champion_eval = None if champion is None else evaluate_model(champion.detector, parts.holdout, config, "champion")
    if isinstance(champion_eval, UserError):
        return _fail(champion_eval)
    det = fit_detector(parts.train, config)
    if isinstance(det, UserError):
        return _fail(det)
    eval_metrics, anomaly_scores = evaluate_labelled(det, parts.train)
    reg = register_model(det, config, eval_metrics, anomaly_scores)
    if isinstance(reg, UserError):
        return _fail(reg)
    challenger_eval = evaluate_model(det, parts.holdout, config, "challenger")
    if isinstance(challenger_eval, UserError):
        return _fail(challenger_eval)
    decision = decide(challenger_eval, champion_eval, config.margin, config.level)
    evals = {"champion": champion_eval, "challenger": challenger_eval}
    run_id = record_decision(config, champion, reg.version, evals, decision)
    if isinstance(run_id, UserError):
        return _fail(run_id)
    print(decision.reason)
    return {
        "model_name": config.model_name,
        "champion_version": None if champion is None else champion.version,
        "challenger_version": reg.version,
        "promoted": decision.promote,
        "rule": decision.rule,
        "reason": decision.reason,
        "champion": None if champion_eval is None else champion_eval.to_dict(),
        "challenger": challenger_eval.to_dict(),
        "decision_run_id": run_id,
        "tracking_uri": redact(tracking.tracking_uri()),
    }


def _fail(err: UserError) -> Any:
    return Failed(message=err.message, data=err)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m flows.retrain", description=__doc__.split("\n")[0])
    p.add_argument("data", help="the new table (CSV or Parquet): normal rows, or labelled with --label-column")
    p.add_argument("--model-name", default="vae-anomaly", help="registered model name (default: vae-anomaly)")
    p.add_argument(
        "--label-column",
        default=None,
        help="0/1 column (1 = anomaly): its anomalies are held out and the models compared by AUROC",
    )
    p.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.2,
        help="share of the new normal rows held out to compare the models (default: 0.2)",
    )
    p.add_argument("--margin", type=float, default=0.01, help="AUROC gain that counts as better (default: 0.01)")
    p.add_argument(
        "--level",
        type=float,
        default=0.01,
        help="test level for 'flags more normal rows than alpha' (beta-binomial; default: 0.01)",
    )
    p.add_argument("--champion-alias", default="champion", help="alias moved on promotion (default: champion)")
    p.add_argument("--alias", default="challenger", help="alias of the challenger's version (default: challenger)")
    p.add_argument("--experiment", default="vae-anomaly", help="MLflow experiment of the training run")
    p.add_argument(
        "--decision-experiment",
        default="vae-anomaly-retrain",
        help="MLflow experiment of the decision runs (default: vae-anomaly-retrain)",
    )
    p.add_argument("--id-columns", type=csv_list, default=[], help="comma-separated columns carried to reports")
    p.add_argument("--categorical-columns", type=csv_list, default=[], help="force these columns categorical")
    p.add_argument(
        "--segment-column", default=None, help="the challenger's per-segment threshold column (as flows.train)"
    )
    p.add_argument("--alpha", type=float, default=0.01, help="the challenger's target false-positive rate")
    p.add_argument("--max-epochs", type=int, default=None, help="cap on epochs (default: the trainer's budget)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--latent-dim", type=int, default=None)
    p.add_argument("--trim-fraction", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def print_outcome(s: dict[str, Any]) -> None:
    name, ch = s["model_name"], s["challenger_version"]
    if s["promoted"]:
        was = "" if s["champion_version"] is None else f" (was v{s['champion_version']})"
        print(f"promoted {name} v{ch} to champion{was}")
    else:
        print(f"kept {name} v{s['champion_version']} as champion; v{ch} stays the challenger")
    print(f"  rule: {s['rule']}: {s['reason']}")
    for who in ("champion", "challenger"):
        e = s[who]
        if e is None:
            continue
        auroc = "" if e["auroc"] is None else f", AUROC {e['auroc']:.4f}, AUPRC {e['auprc']:.4f}"
        print(
            f"  {who}: FPR {e['fpr']:.2%} on {e['n_normal']} held-out normal rows at alpha={e['alpha']:g} "
            f"(p={e['fpr_pvalue']:.2g}, beta-binomial){auroc}"
        )
    print(f"  decision run: {s['decision_run_id']} ({s['tracking_uri']})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        config = RetrainConfig(**vars(args))
        state = retrain(config, return_state=True)
        failed = flow_failure("python -m flows.retrain", state)
        if failed is not None:
            return failed
        print_outcome(state.result())
        return 0

    return run("python -m flows.retrain", body)


if __name__ == "__main__":
    sys.exit(main())
