"""``score`` flow and its tasks: score tables or image batches with a registered model, one report each.

The command line is ``python -m flows.score`` (flows/score.py); reports are described there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows import tracking
from flows.cli import one_line
from flows.config import ScoreConfig
from flows.kinds import check_model_kind
from flows.parallel import run_each
from flows.progress import progress_bar

log = logging.getLogger(__name__)


class BatchFailed(Exception):
    """Some inputs of a scoring run failed: the others' summaries, and each failure."""

    def __init__(self, summaries: list[dict[str, Any]], errors: list[Exception]) -> None:
        super().__init__("; ".join(one_line(e) for e in errors))
        self.summaries = summaries
        self.errors = errors
        self.exit_code = max(int(getattr(e, "exit_code", 1)) for e in errors)

    def __reduce__(self) -> tuple[type, tuple[list[dict[str, Any]], list[Exception]]]:  # pickled by Prefect
        return type(self), (self.summaries, self.errors)


@task(cache_policy=NO_CACHE, **tracking.RETRIES)
def load_model(model_uri: str, kind: str | None = None) -> tracking.ResolvedModel:
    """The registered model, refused when it is not for ``kind`` (table or image) of data."""
    tracking.setup()
    model = tracking.load_model(model_uri)  # leaves sys.path as it was (Dask workers copy it)
    if kind is not None:
        check_model_kind(kind, model.detector.kind, model_uri)
    return model


@task(cache_policy=NO_CACHE, **tracking.RETRIES)
def score_input(
    model: tracking.ResolvedModel, source: str | list[str], config: ScoreConfig, out: Path
) -> dict[str, Any]:
    """Score one input into its report and ``<stem>.summary.json``; returns the summary."""
    from pipeline.score.summary import write_summary

    det = model.detector
    rule = config.flag_rule(det.alpha)
    if det.kind == "image":
        from pipeline.score.image_scoring import score_images_batch

        s = score_images_batch(det, source, out, model.uri, model.name, model.version, rule=rule, top_k=config.top_k)
    else:
        from pipeline.score.scoring import score_file

        with progress_bar(Path(str(source)).name) as progress:  # a bar on long runs, in a terminal only
            s = score_file(
                det,
                str(source),
                out,
                model.uri,
                model.name,
                model.version,
                rule=rule,
                label_column=config.label_column,
                f1_optimal=config.f1_optimal,
                progress=progress,
            )
    write_summary(s)
    return s.to_dict()


@task(cache_policy=NO_CACHE)
def publish_summary(summaries: list[dict[str, Any]], errors: list[str], experiment: str) -> None:
    """A Prefect table artifact of the batch; one MLflow scoring run with the contact sheets, linked."""
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
            "input_sha256": s.get("input_sha256", ""),
            "report": s["report"],
            "page": s.get("report_html") or "",
            **({"undecodable": s["errors"], "contact_sheet": s["contact_sheet"] or ""} if "contact_sheet" in s else {}),
        }
        for s in summaries
    ]
    rows += [{"input": e, "rows": 0, "flagged": 0, "report": "FAILED"} for e in errors]
    create_table_artifact(
        table=rows,
        key="score-summary",
        description="vae-anomaly: rows scored and flagged per input, and batch health",
    )
    if not summaries:
        return
    try:  # the reports are written: a tracking hiccup must not fail the run
        run_id = tracking.log_scoring(summaries, experiment)
        for s in summaries:
            for key, folder, what in (
                ("report_html", "reports", "the batch's report page"),
                ("contact_sheet", "contact_sheets", "the top anomalies"),
            ):
                if s.get(key):
                    [uri] = tracking.log_files(run_id, [s[key]], folder)
                    s[f"{key}_uri"] = uri
                    create_link_artifact(
                        link=uri,
                        link_text=Path(s[key]).name,
                        key=key.replace("_", "-"),
                        description=f"{what} of {s['input']} (MLflow run {run_id})",
                    )
    except Exception as e:
        log.warning("could not log scoring to MLflow: %s", one_line(e)[:200])


@flow(name="score", log_prints=True)
def score(config: ScoreConfig) -> list[dict[str, Any]]:
    """Score every input; returns one summary per input.

    Raises:
        BatchFailed: some inputs failed (the others are scored and their summaries kept).
    """
    todo = config.jobs()  # refuses inputs that would share a report, before any work
    model = load_model(config.model_uri(), config.kind)
    # In order, or in parallel on Dask (config.dask_*); a folder of tables is a dataset: one task per part.
    results = run_each(
        score_input, [{"model": model, "source": src, "config": config, "out": out} for src, out in todo], config
    )
    summaries = [r for r in results if not isinstance(r, Exception)]
    errors = [r for r in results if isinstance(r, Exception)]
    publish_summary(summaries, [one_line(e) for e in errors], config.experiment)
    if errors:
        raise BatchFailed(summaries, errors)
    return summaries
