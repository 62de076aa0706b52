"""``score`` flow: score tables with a registered model into one CSV report per file.

    python -m flows.score data/demo/new_batch.csv --model models:/vae-anomaly@champion --out reports/

Each report ``<out>/<input stem>.anomalies.csv`` has one row per input row, in input order:
``row``, the id columns, ``score``, ``threshold``, ``is_anomaly`` (0/1).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows import tracking
from flows.cli import ArgumentParser, run
from flows.config import ScoreConfig
from flows.outcome import UserError, user_errors
from pipeline import scoring


@task(cache_policy=NO_CACHE)
def load_model(model_uri: str) -> tracking.ResolvedModel | UserError:
    try:
        tracking.setup()
        return tracking.load_model(model_uri)
    except user_errors() as e:
        return UserError.of(e)


@task(cache_policy=NO_CACHE)
def score_file(model: tracking.ResolvedModel, path: Path, out: Path) -> dict[str, Any] | UserError:
    try:
        s = scoring.score_file(model.detector, path, out, model.uri, model.name, model.version)
        return s.to_dict()
    except user_errors() as e:
        return UserError.of(e)


@task(cache_policy=NO_CACHE)
def publish_summary(summaries: list[dict[str, Any]], errors: list[str]) -> None:
    rows = [{k: s[k] for k in ("input", "rows", "flagged", "threshold", "model_name", "model_version",
                               "input_sha256", "report")} for s in summaries]
    rows += [{"input": e, "rows": 0, "flagged": 0, "report": "FAILED"} for e in errors]
    create_table_artifact(table=rows, key="score-summary",
                          description="vae-anomaly: rows scored and flagged per input file")


@flow(name="score", log_prints=True)
def score(config: ScoreConfig) -> list[dict[str, Any]]:
    """Score every input file; returns one summary per file. Fails if any file failed."""
    model = load_model(config.model)
    if isinstance(model, UserError):
        return Failed(message=model.message, data=[model])  # type: ignore[return-value]
    results = [score_file(model, p, config.out) for p in config.inputs]
    summaries = [r for r in results if not isinstance(r, UserError)]
    errors = [r for r in results if isinstance(r, UserError)]
    publish_summary(summaries, [e.message for e in errors])
    if errors:
        message = "; ".join(e.message for e in errors)
        return Failed(message=message, data=[*summaries, *errors])  # type: ignore[return-value]
    return summaries


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m flows.score", description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", type=Path, help="CSV or Parquet files to score")
    p.add_argument("--model", default="models:/vae-anomaly@champion",
                   help="MLflow model URI (default: models:/vae-anomaly@champion)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="report folder (default: reports/)")
    return p


def print_summary(s: dict[str, Any]) -> None:
    extra = f", AUROC {s['auroc']:.3f}" if s.get("auroc") is not None else ""
    print(f"{s['input']}: flagged {s['flagged']} of {s['rows']} rows "
          f"(threshold {s['threshold']:.4g}, model {s['model_name']} v{s['model_version']}{extra})")
    print(f"  report: {s['report']}")
    print(f"  input sha256: {s['input_sha256']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        config = ScoreConfig(inputs=args.inputs, model=args.model, out=args.out)
        state = score(config, return_state=True)
        data = state.result(raise_on_failure=False)
        if state.is_failed() and not (isinstance(data, list) and any(isinstance(d, UserError) for d in data)):
            state.result()  # an unexpected failure: re-raise it
        items = data if isinstance(data, list) else []
        for s in items:
            if isinstance(s, dict):
                print_summary(s)
        errs = [e for e in items if isinstance(e, UserError)]
        for e in errs:
            print(f"python -m flows.score: error: {e.message}", file=sys.stderr)
        return max((e.exit_code for e in errs), default=0)

    return run("python -m flows.score", body)


if __name__ == "__main__":
    sys.exit(main())
