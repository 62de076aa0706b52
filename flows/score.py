"""``score`` flow: score tables or image batches with a registered model into one CSV report each.

    python -m flows.score data/demo/new_batch.csv --model models:/vae-anomaly@champion --out reports/
    python -m flows.score data/demo/images/new_batch --model models:/vae-anomaly-images@champion

Tables: each report ``<out>/<input stem>.anomalies.csv`` has one row per input row, in input order: ``row``,
the id columns, ``score``, ``threshold``, ``is_anomaly`` (0/1), ``p_value`` (and ``q_value`` with ``--fdr``).
Images: each folder or IDX/.npz file is one batch, and loose image files and globs together are one batch
named ``images``; its report has ``path``, ``score``, ``threshold``, ``is_anomaly``, ``p_value``
[, ``q_value``], ``error``, beside ``<name>.contact_sheet.png`` (the top-k most anomalous images). Every
report has ``<stem>.summary.json`` beside it with the summary and the batch's health.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows import tracking
from flows.cli import EXIT_OK, ArgumentParser, one_line, run
from flows.config import ScoreConfig
from flows.parallel import run_each
from flows.progress import progress_bar
from pipeline.errors import InputError

log = logging.getLogger(__name__)


class BatchFailed(Exception):
    """Some inputs of a scoring run failed: the others' summaries, and each failure."""

    def __init__(self, summaries: list[dict[str, Any]], errors: list[Exception]) -> None:
        super().__init__("; ".join(one_line(e) for e in errors))
        self.summaries = summaries
        self.errors = errors
        self.exit_code = max(int(getattr(e, "exit_code", 1)) for e in errors)


def jobs(config: ScoreConfig) -> list[tuple[str | list[str], Path]]:
    """(input, report folder) per scoring task, checked before any work.

    Tables: a file, or each part of a dataset folder (its reports in a folder of its own under ``out``).
    Images: each folder or array file, and all loose image files and globs together.

    Raises:
        InputError: a missing input, or two inputs that would write the same report.
    """
    if config.kind == "image":
        from pipeline.images import is_array_file

        whole: list[str | list[str]] = [i for i in config.inputs if Path(i).is_dir() or is_array_file(Path(i))]
        loose = [i for i in config.inputs if i not in whole]
        return [(b, config.out) for b in [*whole, *([loose] if loose else [])]]
    from pipeline.inbox import expand_inputs

    return [(str(p), out) for p, out in expand_inputs([Path(i) for i in config.inputs], config.out)]


@task(cache_policy=NO_CACHE, **tracking.RETRIES)
def load_model(model_uri: str, kind: str | None = None) -> tracking.ResolvedModel:
    """The registered model, refused when it is not for ``kind`` (table or image) of data."""
    tracking.setup()
    model = tracking.load_model(model_uri)  # leaves sys.path as it was (Dask workers copy it)
    if kind is not None and model.detector.kind != kind:
        raise InputError(
            f"the inputs are {kind}s but model {model_uri} is {'an' if model.detector.kind == 'image' else 'a'} "
            f"{model.detector.kind} model: give a{'n image' if kind == 'image' else ' table'} model with --model, "
            f"or {model.detector.kind}s to score"
        )
    return model


@task(cache_policy=NO_CACHE, **tracking.RETRIES)
def score_input(
    model: tracking.ResolvedModel, source: str | list[str], config: ScoreConfig, out: Path
) -> dict[str, Any]:
    """Score one input into its report and ``<stem>.summary.json``; returns the summary."""
    from pipeline.summary import write_summary

    det = model.detector
    rule = config.flag_rule(det.alpha)
    if det.kind == "image":
        from pipeline.image_scoring import score_images_batch

        s = score_images_batch(det, source, out, model.uri, model.name, model.version, rule=rule, top_k=config.top_k)
    else:
        from pipeline.scoring import score_file

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
    target = Path(s.report).with_name(Path(s.report).name.replace(".anomalies.csv", ".summary.json"))
    try:
        write_summary(s, target)
    except OSError as e:
        raise InputError(f"cannot write summary {target}: {e.strerror or e}") from e
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
            if s.get("contact_sheet"):
                [uri] = tracking.log_files(run_id, [s["contact_sheet"]], "contact_sheets")
                s["contact_sheet_uri"] = uri
                create_link_artifact(
                    link=uri,
                    link_text=Path(s["contact_sheet"]).name,
                    key="contact-sheet",
                    description=f"top anomalies of {s['input']} (MLflow run {run_id})",
                )
    except Exception as e:
        log.warning("could not log scoring to MLflow: %s", one_line(e)[:200])


@flow(name="score", log_prints=True)
def score(config: ScoreConfig) -> list[dict[str, Any]]:
    """Score every input; returns one summary per input.

    Raises:
        BatchFailed: some inputs failed (the others are scored and their summaries kept).
    """
    todo = jobs(config)  # refuses inputs that would share a report, before any work
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


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m flows.score", description=__doc__.split("\n")[0])
    p.add_argument(
        "inputs",
        nargs="+",
        help="CSV or Parquet files, or folders of them (a partitioned dataset); or images: folders, IDX/.npz "
        "files, image files or (quoted) globs",
    )
    p.add_argument("--kind", default="auto", choices=["auto", "table", "image"], help="default: from the input")
    p.add_argument(
        "--model",
        default=None,
        help="MLflow model URI (default: models:/vae-anomaly@champion; models:/vae-anomaly-images@champion for images)",
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
    t = p.add_argument_group("tables")
    t.add_argument("--label-column", default=None, help="0/1 column (1 = anomaly): report precision, recall, AUROC")
    t.add_argument(
        "--f1-optimal", action="store_true", help="with labelled anomalies, flag at the F1-optimal threshold"
    )
    i = p.add_argument_group("images")
    i.add_argument("--top-k", type=int, default=None, help="images on the contact sheet (default: 16)")
    dask = p.add_argument_group("parallel scoring on Dask, one task per input or dataset part (default: in order)")
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
    what = f"{s['scored']} images, {s['errors']} undecodable" if "contact_sheet" in s else f"{s['rows']} rows"
    print(
        f"{s['input']}: flagged {s['flagged']} of {what} "
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
    if s.get("contact_sheet"):
        print(f"  contact sheet: {s['contact_sheet']}")
    if s.get("input_sha256"):
        print(f"  input sha256: {s['input_sha256']}")


def report_batch(prog: str, summaries: list[dict[str, Any]], errors: list[Exception]) -> int:
    """Print each summary, then each failed input's one-line error; the exit code is the highest error's."""
    from flows.settings import redact

    for s in summaries:
        print_summary(s)
    for e in errors:
        print(f"{prog}: error: {redact(one_line(e))}", file=sys.stderr)
    return max((int(getattr(e, "exit_code", 1)) for e in errors), default=EXIT_OK)


def main(argv: list[str] | None = None) -> int:
    prog = "python -m flows.score"
    args = build_parser().parse_args(argv)

    def body() -> int:
        config = ScoreConfig(**{k: v for k, v in vars(args).items() if v is not None})
        try:
            summaries = score(config)
        except BatchFailed as e:
            return report_batch(prog, e.summaries, e.errors)
        return report_batch(prog, summaries, [])

    return run(prog, body)


if __name__ == "__main__":
    sys.exit(main())
