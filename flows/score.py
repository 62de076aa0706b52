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

import sys
from pathlib import Path
from typing import Any

from flows.cli import EXIT_OK, ArgumentParser, add_dask_arguments, one_line, orchestration, run
from flows.config import ScoreConfig


def preflight(config: ScoreConfig) -> tuple[int, list[Exception]]:
    """Check, before the flow starts, what would fail in it; returns how many inputs there are and each input's
    error (a missing or unreadable file, a table without the columns the model needs), in input order.

    Raises:
        InputError: inputs that would share a report, or a model of the other kind.
        ModelError, TrackingUnavailable: a model URI the registry does not resolve, or no registry.
    """
    from flows import tracking
    from pipeline.data.io import read_header
    from pipeline.errors import InputError

    headers: dict[str, list[str] | None] = {}
    errors: list[Exception] = []
    jobs = config.jobs()
    for source, _ in jobs:
        if config.kind == "table":
            try:
                headers[str(source)] = read_header(str(source))
            except InputError as e:
                errors.append(e)
    if errors and len(errors) == len(jobs):  # nothing readable: no need to ask the registry
        return len(jobs), errors
    facts = tracking.model_facts(config.model_uri())
    config.check_model_kind(facts.kind)
    if facts.schema is None:
        return len(jobs), errors
    from pipeline.data.schema import Schema

    schema = Schema.from_dict(facts.schema)
    for source, header in headers.items():
        try:
            if header is not None:
                schema.check_columns(header, source)
        except InputError as e:
            errors.append(e)
    return len(jobs), errors


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
    add_dask_arguments(p, "parallel scoring on Dask, one task per input or dataset part (default: in order)")
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
    if s.get("report_html"):
        print(f"  page: {s['report_html']}")
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
        n_inputs, refused = preflight(config)
        if refused and len(refused) == n_inputs:  # nothing to score: answer now, without Prefect
            return report_batch(prog, [], refused)
        flow = orchestration("flows.score_flow")
        try:
            summaries = flow.score(config)
        except flow.BatchFailed as e:
            return report_batch(prog, e.summaries, e.errors)
        return report_batch(prog, summaries, [])

    return run(prog, body)


if __name__ == "__main__":
    sys.exit(main())
