"""Scoring one input file into a report and its summary (no orchestration), streaming.

Design (bounded memory whatever the file size):

- The file is read in chunks (:func:`pipeline.io.iter_table`), re-cut to exactly ``chunk_rows``
  rows, a multiple of the detector's ``SCORE_CHUNK``: the model then sees the same torch batches
  as when the whole file is scored at once, so scores are bit-identical whatever the read chunking.
- Each chunk is validated (schema errors name the file, the column and the row counted over the
  whole file), scored and explained, and its report lines are written to the temporary file of
  :func:`pipeline.report.atomic_writer`, renamed into place only once every row is written.
- Nothing per row is kept for the whole file with the default rules: the health check's KS counts
  (:class:`pipeline.health.KSCounter`) and the flag count are updated chunk by chunk. Labels, ``fdr``
  and ``f1_optimal`` need every score at the end: then the scores (float64, 8 bytes/row), flags and
  labels (1 byte/row each) are kept, and the whole-file steps run after the memory the chunks freed is
  handed back to the OS (``malloc_trim``).
- Columns that depend on the whole batch (``threshold``, ``is_anomaly``, ``q_value`` under
  ``fdr``; ``threshold`` and ``is_anomaly`` under ``f1_optimal`` with labels) cannot be written in
  the first pass. The other columns of each chunk are then spilled, typed, to an Arrow IPC stream
  in a temporary file; a second pass reads the spill back chunk by chunk, adds those columns
  from the in-memory scores and writes the report. With the default rules (``alpha``,
  ``conditional``) every column is known per row and the report is written in one pass.
- Reading, scoring and writing overlap: the next chunk is read in a background thread and the
  previous chunk is formatted and written in another while the model scores the current one.

The report's bytes depend only on the model and the input: the same as scoring the file whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import torch

from pipeline.attribution import attribution_columns
from pipeline.calibrate import p_values
from pipeline.detector import VAEAnomalyDetector
from pipeline.detector_scoring import SCORE_CHUNK, Explanation
from pipeline.errors import InputError
from pipeline.health import KSCounter, batch_health
from pipeline.io import iter_table, sha256_file
from pipeline.metrics import f1_optimal_threshold, labelled_metrics, labels_from
from pipeline.report import atomic_writer, csv_header, csv_rows, report_path
from pipeline.rules import FlagRule, apply_rule
from pipeline.schema import most_extreme
from pipeline.segments import POOLED, segment_values
from pipeline.summary import ScoreSummary

# Rows per chunk. Measured with 21 numeric columns (1 M rows, `benchmarks.scoring`): 4 x 65,536 rows peaked at
# 1.3 GB RSS, 65,536 at 1,016-1,036 MB with the hidden-layer density terms, 32,768 at 796 MB for the same time.
CHUNK_ROWS = SCORE_CHUNK
ATTRIBUTION = ("top_features", "top_observed", "top_expected")
Progress = Callable[[int, float], None]
"""Called after each chunk with the rows scored so far and the share of the file read, in [0, 1]."""


def score_file(
    det: VAEAnomalyDetector,
    path: str | Path,
    out_dir: str | Path,
    model_uri: str = "",
    model_name: str | None = None,
    model_version: str | None = None,
    rule: FlagRule | None = None,
    label_column: str | None = None,
    f1_optimal: bool = False,
    *,
    chunk_rows: int = CHUNK_ROWS,
    read_rows: int | None = None,
    progress: Progress | None = None,
    torch_threads: int | None = None,
) -> ScoreSummary:
    """Score every row of ``path`` and write ``<out_dir>/<stem>.anomalies.csv`` atomically, streaming.

    Args:
        rule: how rows are flagged; default: p <= the model's alpha (its calibrated threshold).
        label_column: a 0/1 column (1 = anomaly) of the input, for precision/recall/F1/AUROC/AUPRC;
            defaults to the model's label column when the input has it.
        f1_optimal: with labels that include anomalies, flag at the F1-optimal threshold instead.
        chunk_rows: rows scored per chunk; rounded up to a multiple of ``SCORE_CHUNK``.
        read_rows: rows per read from the file (default ``chunk_rows``); any value gives the same report.
        progress: see :data:`Progress`.
        torch_threads: threads of the model while scoring (restored afterwards); default one core less
            than this process may use, at least 1: reading and writing run on the remaining core.

    Raises:
        InputError: unreadable file, schema mismatch (names column and row), a score that overflows,
            bad labels or level, or unwritable output.
    """
    t0 = time.perf_counter()
    p = Path(path)
    rule = rule or FlagRule("alpha", det.alpha)
    target = report_path(out_dir, p)
    ensure_out_dir(target.parent)
    chunk_rows = max(-(-chunk_rows // SCORE_CHUNK), 1) * SCORE_CHUNK
    limit_malloc_arenas()
    run = _Run(det, p, rule, label_column, f1_optimal, target.parent)
    chunks = _recut(iter_table(p, det.schema_.id_columns, read_rows or chunk_rows, run.read_position), chunk_rows)
    with scoring_threads(torch_threads), ThreadPoolExecutor(max_workers=3, thread_name_prefix="vae-anomaly-io") as pool:
        digest = pool.submit(_sha256, p)  # reads the file once more, beside the scoring
        try:
            with atomic_writer(target) as out:
                run.write_report(_prefetch(chunks, pool), out, pool, progress)
        except OSError as e:
            raise InputError(f"cannot write report {target}: {e.strerror or e}") from e
        input_sha256 = digest.result()
    return run.summary(target, input_sha256, model_uri, model_name, model_version, time.perf_counter() - t0)


M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas for this process (as ``MALLOC_ARENA_MAX`` would).

    Each thread that allocates (reader, writer, k-NN search, model) otherwise gets an arena of its own,
    and each keeps the chunks' freed memory: measured in-process on 1 M rows (21 columns), peak RSS
    716-726 MiB with 2 arenas against 779-811 MiB without, for 17.1-17.3 s against 16.3-16.5 s (about 5 %
    slower: threads now share arenas). A no-op where libc is not glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)


def release_freed_memory() -> None:
    """Hand memory freed by the chunks back to the OS (glibc keeps it otherwise), before the whole-file steps."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def scoring_threads(threads: int | None = None) -> Iterator[int]:
    """Run torch on ``threads`` (default :func:`model_threads`) inside the block; restore the previous count after.

    The thread policy of every scoring path: the CLI's :func:`score_file` and the MLflow pyfunc's predict
    (which MLflow's scoring server runs on a worker thread that otherwise keeps torch's default, all cores).
    Yields the thread count in use.
    """
    previous = torch.get_num_threads()
    n = threads or model_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)


def model_threads() -> int:
    """One core less than this process may use, at least 1.

    Measured on a shared 2-core machine: with 2 torch threads and the other core busy, scoring was
    up to 10x slower than with 1 thread; the spare core reads and writes in the meantime.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(cores - 1, 1)


class _Run:
    """The state of one file's scoring: per-row scores and labels, the flag decision, notes."""

    def __init__(
        self,
        det: VAEAnomalyDetector,
        path: Path,
        rule: FlagRule,
        label_column: str | None,
        f1_optimal: bool,
        out_dir: Path,
    ) -> None:
        self.det, self.path, self.source, self.rule, self.out_dir = det, path, str(path), rule, out_dir
        self.label_arg, self.f1_optimal = label_column, f1_optimal
        self.label: str | None = None
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.rows = 0
        self.position = 0.0
        self.notes: list[str] = []
        self.flag_parts: list[np.ndarray] = []  # one-pass rules with labels: each row's flag (1 byte/row)
        self.flagged = 0  # one-pass rules: flagged rows so far
        self.health_count = 0
        self.ks = KSCounter(det.calibration_scores_)  # the health test's counts, chunk by chunk
        # per-segment thresholds: each segment's KS counts and flag count (set by the first chunk)
        self.segments = det.segments_
        self.segment_ks: list[KSCounter] = []
        self.segment_flagged: list[int] = []
        self.pooled_rows = self.pooled_flagged = self.unseen_rows = 0
        self.keep_scores = True  # set by the first chunk: False when no whole-file step needs the scores

    def read_position(self, share: float) -> None:
        self.position = share

    # ------------------------------------------------------------------ pass 1
    def write_report(
        self, chunks: Iterator[pd.DataFrame], out: TextIO, pool: ThreadPoolExecutor, progress: Progress | None
    ) -> None:
        """Score every chunk and write the report to ``out`` (one pass, or two through a spill)."""
        pending: Future | None = None
        spill = None
        try:
            for i, chunk in enumerate(chunks):
                features = self._validate(chunk)
                if i == 0:
                    self._first_chunk(chunk)
                    out.write(csv_header(self.columns))
                    if self.two_pass:
                        spill = _Spill(self.out_dir)
                scored = self._score_chunk(chunk, features)
                if pending is not None:
                    pending.result()  # at most one chunk waits to be written: bounded memory
                # The report text of this chunk is made and written in the pool while the model scores the next.
                pending = pool.submit(self._write_chunk, chunk, scored, self.rows, out, spill)
                self.rows += len(chunk)
                if progress is not None:
                    progress(self.rows, self.position)
            if pending is not None:
                pending.result()
            release_freed_memory()
            if spill is not None:
                self._decide()
                for part in spill.read():
                    _write_lines(self._final_frame(part, self._spilled_flags(part)), out)
        finally:
            if pending is not None:
                pending.exception()  # never leave a write running on a file about to be closed
            if spill is not None:
                spill.close()

    def _validate(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """The chunk's validated features; row numbers in errors count from the start of the file."""
        schema = self.det.schema_
        if self.rows:  # columns the model ignores were warned about once, on the first chunk
            known = {*schema.features, *schema.id_columns}
            chunk = chunk[[c for c in chunk.columns if c in known]]
        try:
            return schema.validate(chunk, source=self.source)
        except InputError as e:
            raise _at_row(e, self.rows, self.source) from e

    def _first_chunk(self, chunk: pd.DataFrame) -> None:
        """Checks that need only the columns; fixes the report's columns and whether it takes two passes."""
        det = self.det
        if self.segments is not None:
            self._first_segmented_chunk()
        if det.calibration_rule_ == "cross" and self.rule.kind != "alpha":
            # BH's FDR bound and the DKW bound are proved for split-conformal p-values, not cross-conformal ones
            raise InputError(
                f"the {self.rule.kind} flag rule needs a split-conformal model; this model is cross-conformal "
                f"({len(det.calibration_scores_)} normal training rows): flag at --alpha, or train on at least "
                f"{det.split_conformal_rows()} normal rows"
            )
        # a level the calibration cannot reach raises here; for one-pass rules, the level and threshold
        self.rule_flags = apply_rule(self.rule, np.zeros(0), det.calibration_scores_)
        self.label = self.label_arg or (det.schema_.label_column if det.schema_.label_column in chunk.columns else None)
        if self.label and self.label not in chunk.columns:
            raise InputError(f"{self.path}: label column {self.label!r} not found")
        self.two_pass = self.rule.kind == "fdr" or (self.f1_optimal and self.label is not None)
        # Only the two-pass rules and the labelled metrics need every score (and flag) at the end; otherwise
        # the health test's counts and the flag count are all that is kept (no 8 + 1 bytes per row).
        self.keep_scores = self.two_pass or self.label is not None
        self.columns = [
            "row",
            *det.schema_.id_columns,
            "score",
            "threshold",
            "is_anomaly",
            "p_value",
            *(["q_value"] if self.rule.kind == "fdr" else []),
            *ATTRIBUTION,
        ]

    def _first_segmented_chunk(self) -> None:
        """Per-segment thresholds support the one-pass ``alpha`` rule: each segment's threshold at its level
        (a segment with too few calibration rows for a lower level than the model's uses the pooled one)."""
        assert self.segments is not None
        if self.rule.kind != "alpha" or self.f1_optimal:
            raise InputError(
                f"this model has per-segment thresholds (segment column {self.segments.column!r}): flag at --alpha "
                f"(the {'f1-optimal' if self.f1_optimal else self.rule.kind} rule has no per-segment form)"
            )
        self.segment_thresholds = self.segments.thresholds(self.rule.level)
        self.segment_ks = [KSCounter(c) for c in self.segments.calibration]
        self.segment_flagged = [0] * len(self.segments.values)
        if self.segments.small:
            self.notes.append(
                f"segments with too few calibration rows at training, scored against the pooled threshold: "
                f"{sorted(self.segments.small)}"
            )
        for v, t in zip(self.segments.values, self.segment_thresholds, strict=True):
            if t is None:
                self.notes.append(
                    f"segment {v!r} has too few calibration rows for alpha={self.rule.level}: scored against the "
                    "pooled threshold"
                )

    def _score_chunk(
        self, chunk: pd.DataFrame, features: pd.DataFrame
    ) -> tuple[np.ndarray, Explanation, np.ndarray | None]:
        """The model's part of a chunk: its scores (checked finite), attribution and segment codes (None without
        segments); keeps scores and labels."""
        det, offset = self.det, self.rows
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected by check_finite, row by row
            scores, explanation = det.score_and_explain(features)
        check_finite(det, features, scores, self.source, offset)
        if self.label:
            try:
                self.labels.append(labels_from(chunk[self.label].to_numpy(), self.label).astype(np.int8))
            except InputError as e:
                raise _at_row(e, offset) from e
        if self.keep_scores:
            self.scores.append(scores)
        codes = None
        if self.segments is not None:
            labels = segment_values(chunk[self.segments.column])
            codes = self.segments.codes(labels)
            self.unseen_rows += int((~np.isin(labels, [*self.segments.values, *self.segments.small])).sum())
            # a segment whose threshold does not reach this run's level is scored against the pooled one
            for j, t in enumerate(self.segment_thresholds):
                if t is None:
                    codes[codes == j] = POOLED
        return scores, explanation, codes

    def _write_chunk(
        self,
        chunk: pd.DataFrame,
        scored: tuple[np.ndarray, Explanation, np.ndarray | None],
        offset: int,
        out: TextIO,
        spill: _Spill | None,
    ) -> None:
        """Report lines of one scored chunk to ``out`` (or its typed columns to the spill). Chunks are
        written one at a time, in order: the caller waits for the previous one before submitting."""
        scores, explanation, codes = scored
        self.ks.add(scores)
        part = self._part(chunk, scores, explanation, offset, codes)
        if spill is not None:
            spill.write(part)
        else:
            _write_lines(self._final_frame(part, self._chunk_flags(part, codes)), out)

    def _part(
        self,
        chunk: pd.DataFrame,
        scores: np.ndarray,
        explanation: Explanation,
        offset: int,
        codes: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """The chunk's report columns that do not depend on the rest of the file (typed); with segment
        ``codes``, each row's p-value is against its segment's calibration scores."""
        det = self.det
        part = pd.DataFrame({"row": np.arange(offset, offset + len(chunk), dtype=np.int64)})
        for c in det.schema_.id_columns:
            part[c] = pd.Series(chunk[c].to_numpy(dtype=object), dtype=object)
        part["score"] = np.asarray(scores, dtype=np.float64)
        if codes is None:
            part["p_value"] = p_values(scores, det.calibration_scores_)
        else:  # each row against its segment's calibration scores, or the pooled ones, once
            assert self.segments is not None
            p = np.empty(len(scores))
            for j, cal in [(POOLED, det.calibration_scores_), *enumerate(self.segments.calibration)]:
                rows = codes == j
                p[rows] = p_values(scores[rows], cal)
            part["p_value"] = p
        attribution = attribution_columns(det, chunk, explanation)
        for c in ATTRIBUTION:
            part[c] = pd.Series(attribution[c].to_numpy(dtype=object), dtype=object)
        return part

    def _chunk_flags(
        self, part: pd.DataFrame, codes: np.ndarray | None = None
    ) -> tuple[float | np.ndarray, np.ndarray, np.ndarray | None]:
        """One-pass rules: each row's flag depends only on its own score (and with segment ``codes``, on its
        segment's threshold)."""
        if codes is not None:
            return self._segment_flags(part, codes)
        flags = apply_rule(self.rule, part["score"].to_numpy(), self.det.calibration_scores_)
        self.flagged += int(flags.is_anomaly.sum())
        if self.keep_scores:
            self.flag_parts.append(flags.is_anomaly.astype(bool))
        self.health_count += int((flags.p_value <= flags.effective_level).sum())
        return flags.threshold, flags.is_anomaly, None

    def _segment_flags(self, part: pd.DataFrame, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
        """The ``alpha`` rule with per-segment thresholds: each row against its segment's threshold (or the
        pooled one); per-segment KS and flag counts are kept for the summary's health."""
        scores = part["score"].to_numpy()
        pooled = self.rule_flags.threshold
        threshold = np.full(len(scores), pooled, dtype=np.float64)
        for j, t in enumerate(self.segment_thresholds):
            rows = codes == j
            if t is not None and rows.any():
                threshold[rows] = t
                self.segment_ks[j].add(scores[rows])
                self.segment_flagged[j] += int((scores[rows] > t).sum())
        is_anomaly = (scores > threshold).astype(np.int64)
        pooled_rows = codes == POOLED
        self.pooled_rows += int(pooled_rows.sum())
        self.pooled_flagged += int(is_anomaly[pooled_rows].sum())
        self.flagged += int(is_anomaly.sum())
        if self.keep_scores:
            self.flag_parts.append(is_anomaly.astype(bool))
        self.health_count += int(is_anomaly.sum())
        return threshold, is_anomaly, None

    def _final_frame(
        self, part: pd.DataFrame, flags: tuple[float | np.ndarray, np.ndarray, np.ndarray | None]
    ) -> pd.DataFrame:
        threshold, is_anomaly, q_value = flags
        frame = part
        frame.insert(
            frame.columns.get_loc("score") + 1,
            "threshold",
            np.asarray(threshold, dtype=np.float64) if np.ndim(threshold) else float(threshold),
        )
        frame.insert(frame.columns.get_loc("threshold") + 1, "is_anomaly", np.asarray(is_anomaly, dtype=np.int64))
        if q_value is not None:
            frame.insert(frame.columns.get_loc("p_value") + 1, "q_value", np.asarray(q_value, dtype=np.float64))
        assert list(frame.columns) == self.columns, (list(frame.columns), self.columns)
        return frame

    # ------------------------------------------------------------------ whole-batch decisions
    def all_scores(self) -> np.ndarray:
        """(n,) every row's score; the chunks' arrays are joined once (and then held only once)."""
        if len(self.scores) != 1:
            self.scores = [np.concatenate(self.scores) if self.scores else np.zeros(0)]
        return self.scores[0]

    def all_labels(self) -> np.ndarray | None:
        if not self.label:
            return None
        return np.concatenate(self.labels).astype(np.int64) if self.labels else np.zeros(0, dtype=np.int64)

    def _decide(self) -> None:
        """The flags of the whole file: the rule over all scores, or the F1-optimal threshold.

        Memory: one-pass rules keep nothing per row unless labels need the scores and flags (one bool
        per row); the two-pass rules hold the scores, the p-values while deciding, and the q-values under
        ``fdr``.
        """
        # one-pass rules need no whole-file score array here (f1_optimal with labels is two-pass)
        scores = self.all_scores() if self.two_pass else np.zeros(0)
        y, cal = self.all_labels(), self.det.calibration_scores_
        self.q_value = None
        if not self.two_pass:  # flags and the health count were kept chunk by chunk
            self.is_anomaly = (
                (np.concatenate(self.flag_parts) if self.flag_parts else np.zeros(0, dtype=bool))
                if self.keep_scores
                else None
            )
            self.flag_parts = []
            self.threshold = self.rule_flags.threshold
            self.health_level = self.rule_flags.effective_level
            flags = None
        elif self.rule.kind == "fdr":
            flags = apply_rule(self.rule, scores, cal)
            p, self.q_value, self.is_anomaly = flags.p_value, flags.q_value, flags.is_anomaly.astype(bool)
        else:  # the same as apply_rule over the whole batch: the level and threshold depend on the rule only
            flags = apply_rule(self.rule, scores[:0], cal)
            p = p_values(scores, cal)
            self.is_anomaly = p <= flags.effective_level
        if flags is not None:
            self.threshold = flags.threshold
            # Health asks whether the calibration still holds, whatever the flag rule: rows with p <= level
            # against Binomial(rows, level), at the rule's level (the model's alpha for BH, whose own flag
            # count has no fixed expected rate).
            self.health_level = self.det.alpha if self.rule.kind == "fdr" else flags.effective_level
            self.health_count = int((p <= self.health_level).sum())
            del p
        if self.f1_optimal:
            t = f1_optimal_threshold(y, scores) if y is not None else None
            if t is None:
                self.notes.append(
                    "no labelled anomalies in this batch: kept the false-positive-rate rule "
                    "(an F1-optimal threshold needs labelled anomalies)"
                )
            else:
                self.threshold, self.is_anomaly = t, scores > t
                self.notes.append(f"flagged at the F1-optimal threshold {t:.6g} found on this batch's labels")

    def _spilled_flags(self, part: pd.DataFrame) -> tuple[float, np.ndarray, np.ndarray | None]:
        rows = part["row"].to_numpy()
        return self.threshold, self.is_anomaly[rows], (self.q_value[rows] if self.q_value is not None else None)

    def summary(
        self,
        target: Path,
        input_sha256: str,
        model_uri: str,
        model_name: str | None,
        model_version: str | None,
        seconds: float,
    ) -> ScoreSummary:
        if not hasattr(self, "is_anomaly"):
            self._decide()
        det, rule, y = self.det, self.rule, self.all_labels()
        notes = list(self.notes)
        metrics = labelled_metrics(y, self.all_scores(), self.is_anomaly) if y is not None else None
        if metrics is not None and metrics["n_labelled_anomalies"] == 0:
            notes.append("no labelled anomalies in this batch: recall, F1 and AUROC are undefined")
        flagged = self.flagged if self.is_anomaly is None else int(self.is_anomaly.sum())
        self.is_anomaly = self.q_value = None  # type: ignore[assignment]
        health = batch_health(self.ks, det.calibration_scores_, self.health_count, self.health_level)
        if health.warning:
            notes.append(health.warning)
        segments = self._segment_summary(notes) if self.segments is not None else None
        n = self.ks.n
        return ScoreSummary(
            input=str(self.path),
            report=str(target),
            rows=n,
            flagged=flagged,
            flagged_fraction=flagged / n if n else 0.0,
            threshold=float(self.threshold),
            rule=rule.describe(),
            alpha=det.alpha,
            calibration=det.calibration_description(),
            input_sha256=input_sha256,
            model_uri=model_uri,
            model_name=model_name,
            model_version=model_version,
            auroc=metrics["auroc"] if metrics else None,
            seconds=seconds,
            health=health.to_dict(),
            metrics=metrics,
            notes=notes,
            segments=segments,
        )

    def _segment_summary(self, notes: list[str]) -> list[dict[str, Any]]:
        """Per segment with its own threshold: rows, flagged, threshold and health; then the pooled rows."""
        assert self.segments is not None
        out = []
        for j, (v, cal, t) in enumerate(
            zip(self.segments.values, self.segments.calibration, self.segment_thresholds, strict=True)
        ):
            if t is None:
                continue
            h = batch_health(self.segment_ks[j], cal, self.segment_flagged[j], self.rule.level)
            if h.warning:
                notes.append(f"segment {v!r}: {h.warning}")
            rows = self.segment_ks[j].n
            out.append(
                {
                    "segment": v,
                    "rows": rows,
                    "flagged": self.segment_flagged[j],
                    "threshold": t,
                    "calibration_rows": len(cal),
                    "health": h.to_dict(),
                }
            )
        if self.unseen_rows:
            notes.append(
                f"{self.unseen_rows} rows have a {self.segments.column!r} value never seen in training: "
                "scored against the pooled threshold"
            )
        out.append(
            {
                "segment": "(pooled: segments too small for alpha, or unseen)",
                "rows": self.pooled_rows,
                "flagged": self.pooled_flagged,
                "threshold": self.rule_flags.threshold,
                "calibration_rows": len(self.det.calibration_scores_),
                "unseen_rows": self.unseen_rows,
            }
        )
        return out


class _Spill:
    """Typed report columns of every chunk, in an Arrow IPC stream beside the report's temporary file."""

    def __init__(self, folder: Path) -> None:
        import pyarrow as pa

        self._pa = pa
        fd, self.path = tempfile.mkstemp(prefix=f".spill.{os.getpid()}.", suffix=".arrow", dir=folder)
        self._file = os.fdopen(fd, "wb")
        self._writer: Any = None

    def write(self, part: pd.DataFrame) -> None:
        pa = self._pa
        arrays = [
            pa.array(part[c].to_numpy())
            if pd.api.types.is_numeric_dtype(part[c])
            else pa.array(part[c].to_numpy(dtype=object), type=pa.string(), from_pandas=True)
            for c in part.columns
        ]
        batch = pa.RecordBatch.from_arrays(arrays, names=list(part.columns))
        if self._writer is None:
            self._writer = pa.ipc.new_stream(self._file, batch.schema)
        self._writer.write_batch(batch)

    def read(self) -> Iterator[pd.DataFrame]:
        if self._writer is None:
            return
        self._writer.close()
        self._file.close()
        with self._pa.memory_map(self.path) as source:
            reader = self._pa.ipc.open_stream(source)
            for batch in reader:
                yield _from_arrow(batch)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        Path(self.path).unlink(missing_ok=True)


def _from_arrow(batch: Any) -> pd.DataFrame:
    """A spilled batch as a frame: numbers as numpy, text as object arrays (None where missing)."""
    return pd.DataFrame(
        {
            name: pd.Series(batch.column(i).to_numpy(zero_copy_only=False), dtype=None if typ != "string" else object)
            for i, (name, typ) in enumerate(zip(batch.schema.names, map(str, batch.schema.types), strict=True))
        }
    )


def _write_lines(frame: pd.DataFrame, out: TextIO) -> None:
    out.write(csv_rows(frame))


def _recut(chunks: Iterator[pd.DataFrame], rows: int) -> Iterator[pd.DataFrame]:
    """The same rows in chunks of exactly ``rows`` (the last one shorter); one empty frame for no rows."""
    held: list[pd.DataFrame] = []
    n, yielded = 0, False
    empty: pd.DataFrame | None = None
    for df in chunks:
        if empty is None:
            empty = df.iloc[:0]
        if len(df):
            held.append(df)
            n += len(df)
        while n >= rows:
            whole = pd.concat(held) if len(held) > 1 else held[0]
            yield whole.iloc[:rows]
            yielded = True
            rest = whole.iloc[rows:]
            held, n = ([rest] if len(rest) else []), len(rest)
    if n:
        yield pd.concat(held) if len(held) > 1 else held[0]
    elif empty is not None and not yielded:
        yield empty


def _prefetch(items: Iterator[pd.DataFrame], pool: ThreadPoolExecutor) -> Iterator[pd.DataFrame]:
    """``items``, each next one read in the pool while the caller works on the current one."""
    future = pool.submit(next, items, None)
    while True:
        item = future.result()
        if item is None:
            return
        future = pool.submit(next, items, None)
        yield item


def _sha256(p: Path) -> str:
    try:
        return sha256_file(p)
    except OSError:
        return hashlib.sha256(b"").hexdigest()  # the reader reports the error


_ROW = re.compile(r"\brow (\d+)\b")


def _at_row(e: InputError, offset: int, source: str = "") -> InputError:
    """``e`` with its first ``row N`` (after the file name) counted from the start of the file."""
    if offset == 0:
        return e
    text = str(e)
    head = source if source and text.startswith(source) else ""
    tail = _ROW.sub(lambda m: f"row {int(m[1]) + offset}", text[len(head) :], count=1)
    return type(e)(head + tail)


def score_features(det: VAEAnomalyDetector, features: pd.DataFrame, source: str = "input") -> np.ndarray:
    """(n,) scores of validated ``features``; every score is finite.

    Raises:
        InputError: a row's score overflows (a value far outside the training range, e.g. 1e308):
            names the row, the column and the value.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected by check_finite, row by row
        scores = det.score_validated(features)
    check_finite(det, features, scores, source)
    return scores


def check_finite(
    det: VAEAnomalyDetector, features: pd.DataFrame, scores: np.ndarray, source: str, offset: int = 0
) -> None:
    """Raise InputError naming the first row whose score overflowed (counted from ``offset``), its column and value."""
    bad = ~np.isfinite(scores)
    if bad.any():
        i = int(np.argmax(bad))
        pre = det.preprocessor_
        where = most_extreme(features.iloc[[i]], det.schema_.numeric, pre.mean_, pre.std_)
        why = (
            f"column {where[0]!r} holds {where[2]!r}, {where[3]:.3g} training standard deviations from the "
            f"training mean"
            if where
            else "its values are outside what the model can score"
        )
        raise InputError(
            f"{source}: row {i + offset} cannot be scored, its score overflows: {why}; remove or cap such values"
        )


def ensure_out_dir(path: str | Path) -> Path:
    """Create the report folder if needed.

    Raises:
        InputError: it cannot be created, or is not a writable folder.
    """
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise InputError(f"output folder {d} exists and is not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {d}: {e.strerror or e}") from e
    if not os.access(d, os.W_OK | os.X_OK):
        raise InputError(f"output folder {d} is not writable")
    return d
