"""``score_images`` flow: score image batches with a registered image model into reports and contact sheets.

    python -m flows.score --kind image data/demo/images/new_batch --model models:/vae-anomaly-images@champion

Each folder or IDX/.npz file is one batch; loose image files and globs together are one batch named
``images``. Per batch: ``<out>/<name>.anomalies.csv`` (``path``, ``score``, ``threshold``, ``is_anomaly``,
``p_value`` [, ``q_value``], ``error``), ``<name>.contact_sheet.png`` (top-k most anomalous: original |
reconstruction | error map) and ``<name>.summary.json``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows import image_tracking, tracking
from flows.cli import ArgumentParser, finish_scoring, run
from flows.config import ImageScoreConfig
from flows.outcome import UserError, user_errors
from pipeline.errors import InputError
from pipeline.image_scoring import score_images_batch
from pipeline.summary import write_summary

log = logging.getLogger(__name__)


def batches(inputs: list[str]) -> list[str | list[str]]:
    """Folders and array files are one batch each; loose image files and globs together are one batch."""
    from pipeline.images import is_array_file

    whole = [i for i in inputs if Path(i).is_dir() or is_array_file(Path(i))]
    loose = [i for i in inputs if i not in whole]
    return [*whole, *([loose] if loose else [])]


@task(cache_policy=NO_CACHE)
def load_image_model(model_uri: str) -> tracking.ResolvedModel | UserError:
    try:
        tracking.setup()
        model = tracking.load_model(model_uri)
        if getattr(model.detector, "kind", "table") != "image":
            raise InputError(
                f"the input is images (a folder, image file, glob or IDX file) but model {model_uri} is "
                "a table model: give an image model with --model, or tables (CSV/Parquet) to score"
            )
        return model
    except user_errors() as e:
        return UserError.of(e)


@task(cache_policy=NO_CACHE)
def score_batch(
    model: tracking.ResolvedModel, source: str | list[str], config: ImageScoreConfig
) -> dict[str, Any] | UserError:
    try:
        s = score_images_batch(
            model.detector,
            source,
            config.out,
            model.uri,
            model.name,
            model.version,
            rule=config.flag_rule(model.detector.alpha),
            top_k=config.top_k,
        )
        target = Path(s.report).with_name(Path(s.report).name.replace(".anomalies.csv", ".summary.json"))
        try:
            write_summary(s, target)
        except OSError as e:
            raise InputError(f"cannot write summary {target}: {e.strerror or e}") from e
        return s.to_dict()
    except user_errors() as e:
        return UserError.of(e)


@task(cache_policy=NO_CACHE)
def publish(summaries: list[dict[str, Any]], errors: list[str], experiment: str) -> None:
    """Prefect table artifact, one MLflow scoring run with the contact sheets, and links to them."""
    rows = [
        {
            "input": s["input"],
            "images": s["rows"],
            "undecodable": s["errors"],
            "flagged": s["flagged"],
            "threshold": s["threshold"],
            "rule": s["rule"],
            "ks_p": s["health"]["ks_pvalue"],
            "warning": s["health"]["warning"],
            "model": f"{s['model_name']} v{s['model_version']}",
            "report": s["report"],
            "contact_sheet": s["contact_sheet"] or "",
        }
        for s in summaries
    ]
    rows += [{"input": e, "images": 0, "flagged": 0, "report": "FAILED"} for e in errors]
    create_table_artifact(
        table=rows,
        key="score-images-summary",
        description="vae-anomaly images: images scored and flagged per batch, and batch health",
    )
    if not summaries:
        return
    try:
        run_id = tracking.log_scoring(summaries, experiment)
        for s in summaries:
            if s["contact_sheet"]:
                [uri] = image_tracking.log_files(run_id, [s["contact_sheet"]], "contact_sheets")
                s["contact_sheet_uri"] = uri
                create_link_artifact(
                    link=uri,
                    link_text=Path(s["contact_sheet"]).name,
                    key="contact-sheet",
                    description=f"top anomalies of {s['input']} (MLflow run {run_id})",
                )
    except Exception as e:  # the reports are written: a tracking hiccup must not fail the run
        log.warning("could not log scoring to MLflow: %s", str(e).splitlines()[0][:200])


@flow(name="score-images", log_prints=True)
def score_images(config: ImageScoreConfig) -> list[dict[str, Any]]:
    """Score every image batch; returns one summary per batch. Fails if any batch failed."""
    model = load_image_model(config.model)
    if isinstance(model, UserError):
        return Failed(message=model.message, data=[model])  # type: ignore[return-value]
    results = [score_batch(model, b, config) for b in batches(config.inputs)]
    summaries = [r for r in results if not isinstance(r, UserError)]
    errors = [r for r in results if isinstance(r, UserError)]
    publish(summaries, [e.message for e in errors], config.experiment)
    if errors:
        return Failed(message="; ".join(e.message for e in errors), data=[*summaries, *errors])  # type: ignore[return-value]
    return summaries


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m flows.score --kind image", description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", help="folders, IDX/.npz files, image files or (quoted) globs")
    p.add_argument(
        "--model",
        default="models:/vae-anomaly-images@champion",
        help="MLflow model URI (default: models:/vae-anomaly-images@champion)",
    )
    p.add_argument("--out", type=Path, default=Path("reports"), help="report folder (default: reports/)")
    p.add_argument("--top-k", type=int, default=16, help="images on the contact sheet (default: 16)")
    rule = p.add_argument_group("flag rule (default: p <= the model's alpha)")
    rule.add_argument("--alpha", type=float, default=None, help="flag images with conformal p-value <= A")
    rule.add_argument("--fdr", type=float, default=None, help="Benjamini-Hochberg over the batch at level Q")
    rule.add_argument(
        "--conditional",
        type=float,
        default=None,
        metavar="DELTA",
        help="calibration-conditional p-values: the alpha guarantee holds with probability >= 1-DELTA",
    )
    return p


def print_summary(s: dict[str, Any]) -> None:
    print(
        f"{s['input']}: flagged {s['flagged']} of {s['scored']} images, {s['errors']} undecodable "
        f"(threshold {s['threshold']:.4g}, model {s['model_name']} v{s['model_version']})"
    )
    print(f"  rule: {s['rule']}")
    h = s["health"]
    print(f"  health: flag count p={h['binomial_pvalue']:.3g}, KS p={h['ks_pvalue']:.3g}")
    for note in s.get("notes", []):
        print(f"  note: {note}")
    print(f"  report: {s['report']}")
    if s.get("contact_sheet"):
        print(f"  contact sheet: {s['contact_sheet']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        values = vars(args)
        config = ImageScoreConfig(**{**values, "inputs": [str(i) for i in values["inputs"]]})
        return finish_scoring("python -m flows.score", score_images(config, return_state=True), print_summary)

    return run("python -m flows.score", body)


if __name__ == "__main__":
    sys.exit(main())
