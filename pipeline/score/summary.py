"""The summary of one scored input, a table file or an image batch: counts, the rule, the calibration, health."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline.errors import InputError
from pipeline.score.report import REPORT_SUFFIX, write_text_atomic

SUMMARY_SUFFIX = ".summary.json"


@dataclass(frozen=True)
class ScoreSummary:
    """What one scored input produced; ``flagged`` of ``rows`` were flagged.

    The last fields belong to one kind, and :meth:`to_dict` leaves them out where they do not apply:
    ``segments`` (tables with per-segment thresholds: per segment its rows, flagged rows, threshold, calibration
    rows and health, then the rows scored against the pooled threshold); ``contact_sheet``, ``scored`` and
    ``errors`` (images: the contact sheet's path, the images decoded and those that could not be).
    ``report_html`` is the batch's page (``<stem>.report.html`` beside the report).
    """

    input: str
    report: str
    rows: int
    flagged: int
    flagged_fraction: float
    threshold: float
    rule: str
    alpha: float
    calibration: str
    input_sha256: str
    model_uri: str
    model_name: str | None
    model_version: str | None
    auroc: float | None
    seconds: float
    health: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    segments: list[dict[str, Any]] | None = None
    report_html: str | None = None
    contact_sheet: str | None = None
    scored: int | None = None
    errors: int | None = None

    IMAGE_FIELDS: ClassVar[tuple[str, ...]] = ("contact_sheet", "scored", "errors")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; a table's summary leaves out the image fields, and ``segments`` when unset."""
        d = asdict(self)
        if self.scored is None:  # a table file
            for k in self.IMAGE_FIELDS:
                d.pop(k)
        if self.segments is None:
            d.pop("segments")
        return d


def beside(report: str | Path, suffix: str) -> Path:
    """The file with ``suffix`` beside a report ``<stem>.anomalies.csv``: ``<stem><suffix>``."""
    p = Path(report)
    return p.with_name(p.name.removesuffix(REPORT_SUFFIX) + suffix)


def write_summary(summary: ScoreSummary) -> Path:
    """The summary as JSON, ``<stem>.summary.json`` beside its report.

    Raises:
        InputError: the file cannot be written.
    """
    target = beside(summary.report, SUMMARY_SUFFIX)
    try:
        return write_text_atomic(json.dumps(summary.to_dict(), indent=1, default=str), target)
    except OSError as e:
        raise InputError(f"cannot write summary {target}: {e.strerror or e}") from e
