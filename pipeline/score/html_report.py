"""A scored batch as one self-contained HTML page: the rule, counts, health, the score histogram, top flagged rows."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import InputError
from pipeline.score.report import write_text_atomic
from pipeline.score.summary import beside

HTML_SUFFIX = ".report.html"
TOP_ROWS = 50  # flagged rows listed on the page, highest scores first
BINS = 60


class ScoreHistogram:
    """A batch's score histogram on fixed bins taken from the calibration scores, counted chunk by chunk.

    The bins span the calibration scores (and the threshold) with room above; scores outside them are not
    drawn, only counted (``below`` / ``above``).
    """

    def __init__(self, calibration_scores: np.ndarray, threshold: float) -> None:
        cal = np.asarray(calibration_scores, dtype=np.float64)
        lo, hi = (float(np.min(cal)), float(max(np.quantile(cal, 0.999), threshold))) if len(cal) else (0.0, 1.0)
        hi = hi + max(hi - lo, 1e-9) * 0.5  # room for scores above the calibration range
        self.edges = np.linspace(lo, hi, BINS + 1)
        self.calibration = np.histogram(cal, self.edges)[0]
        self.counts = np.zeros(BINS, dtype=np.int64)
        self.below = self.above = 0

    def add(self, scores: np.ndarray) -> None:
        s = np.asarray(scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        self.below += int((s < self.edges[0]).sum())
        self.above += int((s > self.edges[-1]).sum())
        self.counts += np.histogram(s, self.edges)[0]


class TopFlagged:
    """The ``k`` flagged rows with the highest scores among report frames seen so far (``is_anomaly`` = 1)."""

    def __init__(self, k: int = TOP_ROWS) -> None:
        self.k = k
        self.rows: pd.DataFrame | None = None

    def add(self, frame: pd.DataFrame) -> None:
        flagged = frame[frame["is_anomaly"] == 1]
        if flagged.empty:
            return
        best = flagged.nlargest(self.k, "score")
        self.rows = best if self.rows is None else pd.concat([self.rows, best]).nlargest(self.k, "score")


def histogram_png(hist: ScoreHistogram, threshold: float, unit: str) -> bytes:
    """The batch's score histogram over the calibration scores' (both as shares), with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centers = (hist.edges[:-1] + hist.edges[1:]) / 2
    width = hist.edges[1] - hist.edges[0]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=90)
    cal_n = max(int(hist.calibration.sum()), 1)
    batch_n = max(int(hist.counts.sum()) + hist.above + hist.below, 1)
    ax.bar(centers, hist.calibration / cal_n, width=width, alpha=0.5, label=f"calibration (normal {unit}, n={cal_n})")
    bars = ax.bar(centers, hist.counts / batch_n, width=width, alpha=0.6, label=f"this batch (n={batch_n})")
    if hist.above:  # one bar for the scores past the calibration range, so that no part of the batch is hidden
        x = hist.edges[-1] + 3 * width
        ax.bar([x], [hist.above / batch_n], width=2 * width, alpha=0.6, color=bars.patches[0].get_facecolor())
        ax.annotate(f"> {hist.edges[-1]:.3g}", (x, hist.above / batch_n), ha="center", va="bottom", fontsize=8)
    ax.axvline(threshold, color="crimson", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("anomaly score (higher = more anomalous)")
    ax.set_ylabel(f"share of {unit}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}"
    "h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}"
    ".verdict{padding:.6em 1em;border-radius:4px}.ok{background:#e6f4ea}.warn{background:#fdecea}"
    "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
    "dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}"
)


def write_html_report(
    summary: dict[str, Any],
    hist: ScoreHistogram,
    top: pd.DataFrame | None,
    columns: Sequence[str] = (),
    contact_sheet: str | Path | None = None,
    missing_rows: int | None = None,
) -> Path:
    """Write the batch's page, ``<stem>.report.html`` beside its report (atomically): no script, no remote
    resource; figures are inline PNGs.

    Args:
        summary: the batch's :class:`ScoreSummary` as a dict.
        top: the flagged rows to list (highest scores first); ``columns`` picks and orders their columns.
        contact_sheet: an image batch's contact sheet, shown as it is.
        missing_rows: rows with at least one empty feature cell (tables).

    Raises:
        InputError: the page cannot be written.
    """
    unit = "images" if "contact_sheet" in summary else "rows"
    s, h = summary, summary["health"]
    warning = h.get("warning") or ""
    verdict = (
        f'<p class="verdict warn">{html.escape(warning)}</p>'
        if warning
        else '<p class="verdict ok">healthy: the flag count and the score distribution match what calibration '
        f"predicts (flag count p={h.get('binomial_pvalue', 1):.3g}, KS p={h.get('ks_pvalue', 1):.3g})</p>"
    )
    facts = {
        "input": s["input"],
        "model": (
            f"{s['model_name']} v{s['model_version']} ({s['model_uri']})"
            if s.get("model_name")
            else s.get("model_uri") or "a detector outside the registry"
        ),
        unit: f"{s['rows']:,}" + (f" ({s['errors']} could not be decoded)" if s.get("errors") else ""),
        "flagged": f"{s['flagged']:,} ({s['flagged_fraction']:.2%})",
        **({"with missing cells": f"{missing_rows:,}"} if missing_rows is not None else {}),
        "threshold": f"{s['threshold']:.6g}",
        "calibration": s["calibration"],
        "report": Path(s["report"]).name,
        "input sha256": s.get("input_sha256", ""),
    }
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in s.get("notes", []) if n != warning)
    n_top = 0 if top is None else len(top)
    listed = (
        _table(top[[c for c in columns if c in top.columns]] if columns else top)
        if n_top
        else f"<p>No {unit} flagged.</p>"
    )
    outside = ""
    if hist.above or hist.below:
        outside = (
            f"<p>{hist.above:,} {unit} score above the calibration scores' range (the bar on the right) and "
            f"{hist.below:,} below it.</p>"
        )
    sheet = ""
    if contact_sheet is not None and Path(contact_sheet).is_file():
        sheet = "<h2>Most anomalous images</h2>" + _img(Path(contact_sheet).read_bytes(), "contact sheet")
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>vae-anomaly: {html.escape(Path(s['input']).name)}</title><style>{STYLE}</style></head><body>"
        f"<h1>vae-anomaly report: {html.escape(s['input'])}</h1>"
        f"<p><strong>Rule:</strong> {html.escape(s['rule'])}.</p>"
        f"{verdict}"
        "<dl>"
        + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts.items())
        + "</dl>"
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
        + "<h2>Scores of this batch against the calibration scores</h2>"
        + _img(histogram_png(hist, float(s["threshold"]), unit), "score histogram")
        + outside
        + f"<h2>Flagged {unit}, highest scores first (at most {TOP_ROWS})</h2>{listed}{sheet}"
        + "</body></html>\n"
    )
    target = beside(s["report"], HTML_SUFFIX)
    try:
        return write_text_atomic(page, target)
    except OSError as e:
        raise InputError(f"cannot write report {target}: {e.strerror or e}") from e
