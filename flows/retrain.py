"""``retrain`` flow: train a challenger on new data, compare it with the champion, promote it only when better.

    python -m flows.retrain data/new.csv --model-name vae-anomaly [--label-column is_fraud] [--holdout-fraction 0.2]

Both models are evaluated on the same held-out rows of the new data (never used to train the challenger); the
promotion rule is in ``pipeline/calibrate/compare.py``. The challenger is always registered (alias ``challenger``); the
``champion`` alias moves to it only on promotion. Every decision is a run in the MLflow experiment
``vae-anomaly-retrain`` and tags on both model versions.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import tracking
from flows.cli import ArgumentParser, csv_list, orchestration, run
from flows.config import RetrainConfig
from flows.train_flow import evaluate_labelled, fit_detector, load_training_data, register_model
from pipeline.calibrate.compare import Evaluation, evaluate, holdout_split
from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.detect.training import TrainingData, check_enough_rows


class Parts(NamedTuple):
    train: TrainingData
    holdout: pd.DataFrame


@task(cache_policy=NO_CACHE)
def split_new_data(det: VAEAnomalyDetector, data: TrainingData, config: RetrainConfig) -> Parts:
    """Hold out rows to compare the models on; check that the rest can still train a challenger."""
    train_part, holdout = holdout_split(data.frame, config.label_column, config.holdout_fraction, config.seed)
    check_enough_rows(
        det, len(train_part), f"{data.source} (after holding out {config.holdout_fraction:.0%} of its normal rows)"
    )
    return Parts(TrainingData(data.source, frame=train_part), holdout)


@task(cache_policy=NO_CACHE, **tracking.RETRIES)
def load_champion(config: RetrainConfig) -> tracking.ResolvedModel | None:
    """The champion version (pinned by number), or None when the model or its champion alias does not exist yet."""
    tracking.setup()
    version = tracking.alias_version(str(config.model_name), config.champion_alias)
    return None if version is None else tracking.load_model(f"models:/{config.model_name}/{version}")


@task(cache_policy=NO_CACHE)
def evaluate_model(det: Any, holdout: pd.DataFrame, config: RetrainConfig, who: str) -> Evaluation:
    return evaluate(det, holdout, config.label_column, source=f"{config.data[0]} (held-out rows, {who})")


@task(cache_policy=NO_CACHE, **tracking.RETRIES)
def record_decision(
    config: RetrainConfig,
    champion: tracking.ResolvedModel | None,
    challenger_version: str,
    evals: dict[str, Evaluation | None],
    decision: Any,
) -> str:
    """Log the decision run, move the champion alias on promotion, tag both versions. Returns the run id."""
    return tracking.log_decision(
        config, None if champion is None else champion.version, challenger_version, evals, decision
    )


@flow(name="retrain", log_prints=True)
def retrain(config: RetrainConfig) -> dict[str, Any]:
    """Train a challenger on ``config.data``, compare it with the champion on held-out rows, promote if better."""
    from pipeline.calibrate.compare import decide

    det = config.detector()
    data = load_training_data(det, config)
    parts = split_new_data(det, data, config)
    champion = load_champion(config)  # before training: a missing server or a schema change fails fast
    champion_eval = None if champion is None else evaluate_model(champion.detector, parts.holdout, config, "champion")
    det, _ = fit_detector(det, parts.train)
    eval_metrics, anomaly_scores = evaluate_labelled(det, parts.train)
    reg = register_model(det, parts.train, config, eval_metrics, anomaly_scores)
    challenger_eval = evaluate_model(det, parts.holdout, config, "challenger")
    decision = decide(challenger_eval, champion_eval, config.margin, config.level)
    evals = {"champion": champion_eval, "challenger": challenger_eval}
    run_id = record_decision(config, champion, reg.version, evals, decision)
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
        "tracking_uri": tracking.redact(tracking.tracking_uri()),
    }


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
    p.add_argument("--trim-fraction", type=float, default=None)
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
        config = RetrainConfig(**{k: v for k, v in vars(args).items() if v is not None and v != []})
        orchestration("flows.retrain")  # imported already: quiets Prefect's console
        print_outcome(retrain(config))
        return 0

    return run("python -m flows.retrain", body)


if __name__ == "__main__":
    sys.exit(main())
