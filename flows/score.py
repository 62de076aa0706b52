"""``score`` flow: score tables with a registered model into one CSV report per file.

    python -m flows.score data/demo/new_batch.csv --model models:/vae-anomaly@champion --out reports/

Each report ``<out>/<input stem>.anomalies.csv`` has one row per input row, in input order:
``row``, the id columns, ``score``, ``threshold``, ``is_anomaly`` (0/1), ``p_value`` (and ``q_value``
with ``--fdr``); ``<stem>.summary.json`` beside it holds the summary and the batch's health.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows import tracking
from flows.cli import ArgumentParser, finish_scoring, run
from flows.config import ScoreConfig
from flows.outcome import UserError, user_errors
from flows.parallel import run_each
from flows.progress import progress_bar
from pipeline import scoring
from pipeline.errors import InputError
from pipeline.inbox import expand_inputs
from pipeline.report import report_path
from pipeline.summary import write_summary

log = logging.getLogger(__name__)


@task(cache_policy=NO_CACHE)
def load_model(model_uri: str) -> tracking.ResolvedModel | UserError:
    try:
        tracking.setup()
        return tracking.load_model(model_uri)  # leaves sys.path as it was (Dask workers copy it)
    except user_errors() as e:
        return UserError.of(e)


@task(cache_policy=NO_CACHE)
def score_file(
    model: tracking.ResolvedModel, path: Path, config: ScoreConfig, out: Path | None = None
) -> dict[str, Any] | UserError:
    out = config.out if out is None else out  # a part of a dataset folder: its folder under config.out
    try:
        with progress_bar(Path(path).name) as progress:  # a bar on long runs, in a terminal only
            s = scoring.score_file(
                model.detector,
                path,
                out,
                model.uri,
                model.name,
                model.version,
                rule=config.flag_rule(model.detector.alpha),
                label_column=config.label_column,
                f1_optimal=config.f1_optimal,
                progress=progress,
            )
        target = report_path(out, path).with_name(f"{Path(path).stem}.summary.json")
        try:
            write_summary(s, target)
        except OSError as e:
            raise InputError(f"cannot write summary {target}: {e.strerror or e}") from e
        return s.to_dict()
    except user_errors() as e:
        return UserError.of(e)


@task(cache_policy=NO_CACHE)
def publish_summary(summaries: list[dict[str, Any]], errors: list[str], experiment: str) -> None:
    rows = [
        {
            "input": s["input"],
            "rows": s["rows"],
            "flagged": s["flagged"],
            "threshold": s["threshold"],
            "rule": s["rule"],
            "binomial_p": s["health"]["binomial_pvalue"],
            "ks_p": s["health"]["ks_pvalue"],
            "warning": s["health"]["warning"],
            "model": f"{s['model_name']} v{s['model_version']}",
            "input_sha256": s["input_sha256"],
            "report": s["report"],
        }
        for s in summaries
    ]
    rows += [{"input": e, "rows": 0, "flagged": 0, "report": "FAILED"} for e in errors]
    create_table_artifact(
        table=rows,
        key="score-summary",
        description="vae-anomaly: rows scored and flagged per input file, and batch health",
    )
    if summaries:
        try:
            tracking.log_scoring(summaries, experiment)
        except Exception as e:  # the reports are written: a tracking hiccup must not fail the run
            log.warning("could not log batch health to MLflow: %s", str(e).splitlines()[0][:200])


@flow(name="score", log_prints=True)
def score(config: ScoreConfig) -> list[dict[str, Any]]:
    """Score every input file; returns one summary per file. Fails if any file failed."""
    try:
        pairs = expand_inputs(config.inputs, config.out)  # refuses inputs that would share a report, before any work
    except user_errors() as e:
        err = UserError.of(e)
        return Failed(message=err.message, data=[err])  # type: ignore[return-value]
    model = load_model(config.model)
    if isinstance(model, UserError):
        return Failed(message=model.message, data=[model])  # type: ignore[return-value]
    # In order, or in parallel on Dask (config.dask_*); a folder input is a dataset: one task per part.
    results = run_each(
        score_file,
        [{"model": model, "path": p, "config": config, "out": out} for p, out in pairs],
        config,
    )
    summaries = [r for r in results if not isinstance(r, UserError)]
    errors = [r for r in results if isinstance(r, UserError)]
    publish_summary(summaries, [e.message for e in errors], config.experiment)
    if errors:
        message = "; ".join(e.message for e in errors)
        return Failed(message=message, data=[*summaries, *errors])  # type: ignore[return-value]
    return summaries


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m flows.score", description=__doc__.split("\n")[0])
    p.add_argument(
        "inputs", nargs="+", type=Path, help="CSV or Parquet files to score, or folders of them (a partitioned dataset)"
    )
    p.add_argument(
        "--model",
        default="models:/vae-anomaly@champion",
        help="MLflow model URI (default: models:/vae-anomaly@champion)",
    )
    p.add_argument("--out", type=Path, default=Path("reports"), help="report folder (default: reports/)")
    rule = p.add_argument_group("flag rule (default: p <= the model's alpha)")
    rule.add_argument("--alpha", type=float, default=None, help="flag rows with conformal p-value <= A")
    rule.add_argument("--fdr", type=float, default=None, help="Benjamini-Hochberg over the batch at level Q")
    rule.add_argument(
        "--conditional",
        type=float,
        default=None,
        metavar="DELTA",
        help="calibration-conditional p-values: the alpha guarantee holds with probability >= 1-DELTA",
    )
    p.add_argument("--label-column", default=None, help="0/1 column (1 = anomaly): report precision, recall, AUROC")
    p.add_argument(
        "--f1-optimal", action="store_true", help="with labelled anomalies, flag at the F1-optimal threshold"
    )
    dask = p.add_argument_group("parallel scoring on Dask, one task per file or dataset part (default: in order)")
    dask.add_argument("--dask-address", default=None, help="scheduler of an existing cluster, e.g. tcp://host:8786")
    dask.add_argument("--dask-workers", type=int, default=None, help="start a LocalCluster with N workers")
    dask.add_argument(
        "--dask-threads",
        dest="dask_processes",
        action="store_false",
        help="LocalCluster workers are threads of this process, not processes",
    )
    return p


def print_summary(s: dict[str, Any]) -> None:
    extra = f", AUROC {s['auroc']:.3f}" if s.get("auroc") is not None else ""
    print(
        f"{s['input']}: flagged {s['flagged']} of {s['rows']} rows "
        f"(threshold {s['threshold']:.4g}, model {s['model_name']} v{s['model_version']}{extra})"
    )
    print(f"  rule: {s['rule']}")
    h = s["health"]
    print(f"  health: flag count p={h['binomial_pvalue']:.3g}, KS p={h['ks_pvalue']:.3g}")
    if s.get("metrics"):
        m = s["metrics"]
        print("  labelled: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))
    for note in s.get("notes", []):
        print(f"  note: {note}")
    print(f"  report: {s['report']}")
    print(f"  input sha256: {s['input_sha256']}")


def main(argv: list[str] | None = None) -> int:
    from flows.image_kind import split_kind

    kind, argv = split_kind(sys.argv[1:] if argv is None else list(argv))
    if kind == "image":  # --kind image, or an image input (folder, image file, glob, IDX)
        from flows.score_images import main as image_main

        return image_main(argv)
    args = build_parser().parse_args(argv)

    def body() -> int:
        return finish_scoring(
            "python -m flows.score", score(ScoreConfig(**vars(args)), return_state=True), print_summary
        )

    return run("python -m flows.score", body)


if __name__ == "__main__":
    sys.exit(main())
