"""One file's scoring pass: each chunk validated, scored, explained and written as report lines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TextIO

import numpy as np
import pandas as pd

from pipeline.calibrate.conformal import p_values
from pipeline.calibrate.health import KSCounter, add_unflagged
from pipeline.calibrate.metrics import labels_from
from pipeline.calibrate.rules import apply_rule
from pipeline.calibrate.segments import POOLED, segment_values
from pipeline.detect.attribution import attribution_columns
from pipeline.detect.detector_scoring import Explanation
from pipeline.errors import InputError
from pipeline.score.report import csv_header
from pipeline.score.score_errors import at_row, check_finite
from pipeline.score.score_state import RunState
from pipeline.score.score_stream import Spill, release_freed_memory, write_lines

ATTRIBUTION = ("top_features", "top_observed", "top_expected")
Progress = Callable[[int, float], None]
"""Called after each chunk with the rows scored so far and the share of the file read, in [0, 1]."""


class ScoreRun(RunState):
    """Scores a file chunk by chunk and writes its report (in one pass, or in two through a spill)."""

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
                        spill = Spill(self.out_dir)
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
                    write_lines(self._final_frame(part, self._spilled_flags(part)), out)
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
            raise at_row(e, self.rows, self.source) from e

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
            "missing",
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
                raise at_row(e, offset) from e
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
        spill: Spill | None,
    ) -> None:
        """Report lines of one scored chunk to ``out`` (or its typed columns to the spill). Chunks are
        written one at a time, in order: the caller waits for the previous one before submitting."""
        scores, explanation, codes = scored
        self.ks.add(scores)
        add_unflagged(self.unflagged_ks, scores, self.det.threshold_)
        self.histogram.add(scores)
        part = self._part(chunk, scores, explanation, offset, codes)
        if spill is not None:
            spill.write(part)
        else:
            write_lines(self._final_frame(part, self._chunk_flags(part, codes)), out)

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
        part["missing"] = chunk[list(det.schema_.features)].isna().sum(axis=1).to_numpy(dtype=np.int64)
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
        self.top.add(frame)
        self.missing_rows += int((frame["missing"].to_numpy() > 0).sum())
        return frame
