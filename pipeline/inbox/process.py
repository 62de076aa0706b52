"""Inbox scoring without orchestration: find new files, keep outbox paths safe, score each file once.

An *item* is one unit of work found in the inbox: a file (tables) or, for a kind with ``folder=True``
(image folders), a folder whose files are that kind's. :data:`~pipeline.inbox.discovery.KINDS` says which
suffixes belong to which kind; a new kind plugs in by adding a :class:`~pipeline.inbox.discovery.Kind` there and
a scorer in the flow.

:func:`process_item` claims an item in the :class:`~pipeline.inbox.manifest.Manifest`, scores it with the
caller's scorer into the outbox (mirroring the item's folder in the inbox), checks that the file did not
change meanwhile, and records the outcome; a failure is retried by later runs and, after the manifest's
``max_attempts``, the item is moved to the quarantine folder with ``<name>.reason.txt`` beside it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError
from pipeline.inbox.discovery import (
    REASON_SUFFIX,
    Item,
    Refused,
    clean_utf8,
    discover,  # noqa: F401  (flows imports it from here)
    expand_inputs,  # noqa: F401  (flows imports it from here)
    fingerprint,
    out_dir_for,
    pending,  # noqa: F401  (flows imports it from here)
    safe_join,
    stat_of,
)
from pipeline.inbox.manifest import Claim, Fingerprint, Manifest, Skip
from pipeline.score.html_report import HTML_SUFFIX
from pipeline.score.report import REPORT_SUFFIX, write_text_atomic
from pipeline.score.summary import SUMMARY_SUFFIX, beside, write_summary

if TYPE_CHECKING:  # the scoring stack (torch) is imported only when a table is scored
    from pipeline.calibrate.rules import FlagRule
    from pipeline.detect.detector import VAEAnomalyDetector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What happened to one item in one run."""

    path: str
    status: str  # done | failed | quarantined | changed | skipped (claimed elsewhere, done...) | duplicate
    report: str | None = None
    error: str | None = None
    attempt: int = 0
    sha256: str | None = None
    summary: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def planned_report(outbox: str | Path, item: Item) -> Path:
    """Where ``item``'s report goes: ``<outbox>/<folder in the inbox>/<stem>.anomalies.csv``."""
    out = out_dir_for(outbox, item.rel)
    return safe_join(out, f"{Path(item.rel).stem}{REPORT_SUFFIX}")


def quarantine(item: Item, quarantine_dir: str | Path, reason: str, sha256: str) -> Path:
    """Move ``item`` to ``<quarantine_dir>/<rel>`` and write ``<that>.reason.txt``; returns the new path.

    A name already taken there gets ``.<sha256[:12]>`` before its suffix. A symlink is moved as the link.
    """
    rel = PurePosixPath(item.rel)
    dest = safe_join(quarantine_dir, item.rel)
    if dest.exists() or dest.is_symlink():
        dest = safe_join(quarantine_dir, str(rel.with_name(f"{rel.stem}.{sha256[:12]}{rel.suffix}")))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(item.path, dest)
    note = (
        f"file: {item.rel}\nsha256: {sha256}\nquarantined: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        f"\nreason: {reason}\n"
    )
    write_text_atomic(note, dest.with_name(dest.name + REASON_SUFFIX))
    return dest


Scorer = Callable[[Path, Path], dict[str, Any]]
"""``scorer(input path, out_dir) -> summary``: writes the report under ``out_dir``; the summary holds at
least ``report`` and ``input_sha256`` (and ``model_uri``, ``model_version``)."""


def score_table(
    det: VAEAnomalyDetector,
    path: Path,
    out_dir: Path,
    model_uri: str = "",
    model_name: str | None = None,
    model_version: str | None = None,
    rule: FlagRule | None = None,
) -> dict[str, Any]:
    """Score one table into ``<out_dir>/<stem>.anomalies.csv`` and ``<stem>.summary.json``; the summary.

    Raises:
        InputError: as :func:`pipeline.score.scoring.score_file`, or the summary cannot be written.
    """
    from pipeline.score.scoring import score_file

    s = score_file(det, path, out_dir, model_uri, model_name, model_version, rule=rule)
    write_summary(s)
    return s.to_dict()


def process_item(
    item: Item,
    manifest: Manifest,
    scorer: Scorer,
    outbox: str | Path,
    quarantine_dir: str | Path,
    run_id: str | None = None,
) -> Outcome:
    """Claim ``item``, score it, record the outcome.

    An item's content is scored once: concurrent runs skip it while claimed, later runs once final; only a
    run that died mid-way (or lost its lease) leaves it to be scored again. Never raises for a problem of
    the item: failures are recorded, retried by later runs, then quarantined.
    """
    try:
        fp = fingerprint(item)
    except (OSError, InputError) as e:  # changed, vanished, or became a FIFO since it was found: look again
        return Outcome(item.rel, "skipped", error=clean_utf8(f"not settled: {e}"))
    try:
        report = str(planned_report(outbox, item)) if item.refused is None else None
    except Refused as e:
        report, item = None, Item(item.path, item.rel, item.kind, refused=str(e))
    claim = manifest.claim(item.rel, fp, item.kind, report=report, run_id=run_id)
    if isinstance(claim, Skip):
        return _skipped(claim, item, fp)
    if item.refused is not None:
        return _quarantine(item, manifest, claim, quarantine_dir, f"refused: {item.refused}")
    if claim.clash is not None:
        return _quarantine(
            item,
            manifest,
            claim,
            quarantine_dir,
            f"refused: its report {report} belongs to {claim.clash}: rename one of the two files",
        )
    if claim.attempt > manifest.max_attempts:  # earlier attempts were killed mid-way (e.g. out of memory)
        return _quarantine(
            item,
            manifest,
            claim,
            quarantine_dir,
            f"{claim.attempt - 1} attempts never finished (the scoring process died)",
        )
    with manifest.hold(claim):
        try:
            summary = scorer(item.path, out_dir_for(outbox, item.rel))
        except Exception as e:
            error = _one_line(e)
            if isinstance(e, Refused) or manifest.fail(claim, error):
                return _quarantine(item, manifest, claim, quarantine_dir, error)
            log.warning("%s: attempt %d failed, will retry: %s", item.rel, claim.attempt, error)
            return Outcome(item.rel, "failed", error=error, attempt=claim.attempt, sha256=fp.sha256)
    return _record(item, manifest, claim, summary)


def _record(item: Item, manifest: Manifest, claim: Claim, summary: dict[str, Any]) -> Outcome:
    """Done, unless the file changed while it was scored: then the report is withdrawn."""
    fp = claim.fingerprint
    try:
        now = stat_of(item)
    except OSError:
        now = (-1, -1)
    if now != (fp.size, fp.mtime_ns) or summary.get("input_sha256", fp.sha256) != fp.sha256:
        error = (
            f"{item.rel} changed while it was scored (sha256 {fp.sha256[:12]} when claimed): report "
            "withdrawn; the new content is scored once it settles"
        )
        report = Path(summary["report"])
        for p in (report, beside(report, SUMMARY_SUFFIX), beside(report, HTML_SUFFIX)):
            p.unlink(missing_ok=True)
        manifest.finish(claim, "changed", error=error)
        log.warning(error)
        return Outcome(item.rel, "changed", error=error, attempt=claim.attempt, sha256=fp.sha256)
    held = manifest.finish(
        claim,
        "done",
        report=summary["report"],
        model_uri=summary.get("model_uri"),
        model_version=summary.get("model_version"),
    )
    if not held:  # our lease expired and another run took the file over: its record stands
        log.warning("%s: claim lost to another run while scoring; its record stands", item.rel)
    return Outcome(item.rel, "done", report=summary["report"], attempt=claim.attempt, sha256=fp.sha256, summary=summary)


def _quarantine(item: Item, manifest: Manifest, claim: Claim, quarantine_dir: str | Path, reason: str) -> Outcome:
    sha = claim.fingerprint.sha256
    try:
        dest = quarantine(item, quarantine_dir, reason, sha)
        where = f"; moved to {dest}"
    except (OSError, InputError) as e:
        where = f"; could not be moved to quarantine ({_one_line(e)}), left in place and never retried"
    manifest.finish(claim, "quarantined", error=reason + where)
    log.warning("%s: quarantined: %s%s", item.rel, reason, where)
    return Outcome(item.rel, "quarantined", error=reason + where, attempt=claim.attempt, sha256=sha)


def _skipped(skip: Skip, item: Item, fp: Fingerprint) -> Outcome:
    if skip.reason == "duplicate":
        return Outcome(
            item.rel,
            "duplicate",
            report=skip.detail or None,
            sha256=fp.sha256,
            error="same bytes as a file already scored: not scored again",
        )
    return Outcome(item.rel, "skipped", sha256=fp.sha256, error=f"{skip.reason} {skip.detail}".strip())


def _one_line(e: BaseException) -> str:
    """The first line of the error; a bug's (not an InputError) is prefixed with its type."""
    text = str(e).strip()
    first = text.splitlines()[0][:500] if text else ""
    if isinstance(e, InputError) and first:
        return first
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
