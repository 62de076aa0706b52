"""MLflow runs besides training: batch scoring, explore outputs, and retrain decisions with their alias move."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.tracking.store import setup, translate
from pipeline.errors import ModelError

if TYPE_CHECKING:
    from flows.config import RetrainConfig
    from pipeline.calibrate.compare import Decision, Evaluation


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

    setup(experiment)
    with mlflow.start_run(run_name=f"explore {command}") as run:
        mlflow.set_tags({"model_uri": model_uri, "command": command})
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for f in files:
            mlflow.log_artifact(str(f), command)
        return run.info.run_id


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
        raise translate(e, mlflow.get_tracking_uri()) from e
    except Exception as e:
        raise translate(e, mlflow.get_tracking_uri()) from e
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
        setup(config.decision_experiment)
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
                    "data": config.data[0],
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
        raise translate(e, uri) from e
