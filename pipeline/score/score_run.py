"""One input's scoring pass: each chunk scored by its source and written as report lines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TextIO

import numpy as np
import pandas as pd

from pipeline.calibrate.conformal import p_values
from pipeline.calibrate.health import KSCounter, add_unflagged
from pipeline.calibrate.rules import apply_rule
from pipeline.calibrate.segments import POOLED, segment_values
from pipeline.errors import InputError
from pipeline.score.report import csv_header
from pipeline.score.score_state import RunState, spread
from pipeline.score.score_stream import Spill, release_freed_memory, write_lines
from pipeline.score.source import Scored

Progress = Callable[[int, float], None]
"""Called after each chunk with the rows scored so far and the share of the file read, in [0, 1]."""


class ScoreRun(RunState):
    """Scores an input chunk by chunk and writes its report (in one pass, or in two through a spill)."""

    def write_report(
        self, chunks: Iterator[object], out: TextIO, pool: ThreadPoolExecutor, progress: Progress | None
    ) -> None:
        """Score every chunk and write the report to ``out`` (one pass, or two through a spill)."""
        pending: Future | None = None
        spill = None
        try:
            for i, chunk in enumerate(chunks):
                if i == 0:
                    self._first_chunk(chunk)
                    out.write(csv_header(self.columns))
                    if self.two_pass:
                        spill = Spill(self.out_dir)
                scored = self._score_chunk(chunk)
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
                offset = 0
                for part in spill.read():
                    write_lines(self._final_frame(part, self._spilled_flags(part, offset)), out)
                    offset += len(part)
        finally:
            if pending is not None:
                pending.exception()  # never leave a write running on a file about to be closed
            if spill is not None:
                spill.close()

    def _first_chunk(self, chunk: object) -> None:
        """Checks that need only the columns; fixes the report's columns and whether it takes two passes."""
        det = self.det
        layout = self.src.start(chunk)
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
        self.label = layout.label
        self.two_pass = self.rule.kind == "fdr" or (self.f1_optimal and self.label is not None)
        # Only the two-pass rules and the labelled metrics need every score (and flag) at the end; otherwise
        # the health test's counts and the flag count are all that is kept (no 8 + 1 bytes per row).
        self.keep_scores = self.two_pass or self.label is not None
        q_value = ["q_value"] if self.rule.kind == "fdr" else []
        self.columns = [*layout.before, "score", "threshold", "is_anomaly", "p_value", *q_value, *layout.after]
        self.page_columns = layout.page

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

    def _score_chunk(self, chunk: object) -> tuple[Scored, np.ndarray | None]:
        """The source's scores of a chunk and its rows' segment codes (None without segments); keeps scores and
        labels."""
        scored = self.src.score(chunk, self.rows)
        if scored.labels is not None:
            self.labels.append(scored.labels)
        if self.keep_scores:
            self.scores.append(scored.scores)
        codes = None
        if self.segments is not None:
            assert scored.segments is not None
            labels = segment_values(scored.segments)
            codes = self.segments.codes(labels)
            self.unseen_rows += int((~np.isin(labels, [*self.segments.values, *self.segments.small])).sum())
            # a segment whose threshold does not reach this run's level is scored against the pooled one
            for j, t in enumerate(self.segment_thresholds):
                if t is None:
                    codes[codes == j] = POOLED
        return scored, codes

    def _write_chunk(
        self,
        chunk: object,
        scored: tuple[Scored, np.ndarray | None],
        offset: int,
        out: TextIO,
        spill: Spill | None,
    ) -> None:
        """Report lines of one scored chunk to ``out`` (or its typed columns to the spill). Chunks are
        written one at a time, in order: the caller waits for the previous one before submitting."""
        one, codes = scored
        scores = one.scores if one.read.all() else one.scores[one.read]
        self.ks.add(scores)
        add_unflagged(self.unflagged_ks, scores, self.det.threshold_)
        self.histogram.add(scores)
        part = self._part(chunk, one, offset, codes)
        if spill is not None:
            spill.write(part)
        else:
            write_lines(self._final_frame(part, self._chunk_flags(part, codes)), out)

    def _part(self, chunk: object, scored: Scored, offset: int, codes: np.ndarray | None = None) -> pd.DataFrame:
        """The chunk's report columns that do not depend on the rest of the input (typed); with segment
        ``codes``, each row's p-value is against its segment's calibration scores."""
        det, scores, read = self.det, scored.scores, scored.read
        part, after = self.src.columns(chunk, scored, offset)
        part["score"] = np.asarray(scores, dtype=np.float64)
        if codes is None:
            part["p_value"] = spread(p_values(scores if read.all() else scores[read], det.calibration_scores_), read)
        else:  # each row against its segment's calibration scores, or the pooled ones, once
            assert self.segments is not None
            p = np.empty(len(scores))
            for j, cal in [(POOLED, det.calibration_scores_), *enumerate(self.segments.calibration)]:
                rows = codes == j
                p[rows] = p_values(scores[rows], cal)
            part["p_value"] = p
        for c in after.columns:
            part[c] = after[c]
        return part

    def _chunk_flags(
        self, part: pd.DataFrame, codes: np.ndarray | None = None
    ) -> tuple[float | np.ndarray, np.ndarray, np.ndarray | None]:
        """One-pass rules: each row's flag depends only on its own score (and with segment ``codes``, on its
        segment's threshold)."""
        if codes is not None:
            return self._segment_flags(part, codes)
        scores = part["score"].to_numpy()
        read = np.isfinite(scores)  # rows that could not be read have no flag
        flags = apply_rule(self.rule, scores if read.all() else scores[read], self.det.calibration_scores_)
        self.flagged += int(flags.is_anomaly.sum())
        is_anomaly = spread(flags.is_anomaly, read, 0)
        if self.keep_scores:
            self.flag_parts.append(is_anomaly.astype(bool))
        self.health_count += int((flags.p_value <= flags.effective_level).sum())
        return flags.threshold, is_anomaly, None

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
        read = np.isfinite(frame["score"].to_numpy())
        flag = np.asarray(is_anomaly, dtype=np.int64)
        if not read.all():  # no flag for a row that could not be read
            flag = np.where(read, flag.astype(object), None)
        frame.insert(frame.columns.get_loc("threshold") + 1, "is_anomaly", flag)
        if q_value is not None:
            frame.insert(frame.columns.get_loc("p_value") + 1, "q_value", np.asarray(q_value, dtype=np.float64))
        assert list(frame.columns) == self.columns, (list(frame.columns), self.columns)
        self.top.add(frame)
        return frame
