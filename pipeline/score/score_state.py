"""The state of one input's scoring and its whole-input steps: the flags over every score, the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.calibrate.conformal import p_values
from pipeline.calibrate.health import KSCounter, batch_health, unflagged_counter
from pipeline.calibrate.metrics import f1_optimal_threshold, labelled_metrics
from pipeline.calibrate.rules import FlagRule, apply_rule
from pipeline.detect.ensemble import EnsembleDetector
from pipeline.score.html_report import ScoreHistogram, TopFlagged
from pipeline.score.source import Source
from pipeline.score.summary import ScoreSummary


class RunState:
    """The state of one input's scoring: per-row scores and labels, the flag decision, notes."""

    def __init__(self, det: EnsembleDetector, src: Source, rule: FlagRule, f1_optimal: bool, out_dir: Path) -> None:
        self.det, self.src, self.source, self.rule, self.out_dir = det, src, src.name, rule, out_dir
        self.f1_optimal = f1_optimal
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
        self.unflagged_ks = unflagged_counter(det.calibration_scores_, det.threshold_)  # rows below the threshold
        # per-segment thresholds: each segment's KS counts and flag count (set by the first chunk)
        self.segments = det.segments_
        self.segment_ks: list[KSCounter] = []
        self.segment_flagged: list[int] = []
        self.pooled_rows = self.pooled_flagged = self.unseen_rows = 0
        self.keep_scores = True  # set by the first chunk: False when no whole-file step needs the scores
        self.histogram = ScoreHistogram(det.calibration_scores_, det.threshold_)  # for the HTML page
        self.top = TopFlagged()

    def read_position(self, share: float) -> None:
        self.position = share

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
        read = np.isfinite(scores)  # rows that could not be read have no flag
        valid = scores if read.all() else scores[read]
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
            flags = apply_rule(self.rule, valid, cal)
            p = flags.p_value
            self.q_value = spread(flags.q_value, read, np.nan)
            self.is_anomaly = spread(flags.is_anomaly.astype(bool), read, False)
        else:  # the same as apply_rule over the whole batch: the level and threshold depend on the rule only
            flags = apply_rule(self.rule, valid[:0], cal)
            p = p_values(valid, cal)
            self.is_anomaly = spread(p <= flags.effective_level, read, False)
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

    def _spilled_flags(self, part: pd.DataFrame, offset: int) -> tuple[float, np.ndarray, np.ndarray | None]:
        """The flags of a spilled part whose first row is row ``offset`` of the input."""
        rows = slice(offset, offset + len(part))
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
        extra = self.src.finish(float(self.threshold))
        notes = [*extra.pop("notes", []), *self.notes]
        metrics = labelled_metrics(y, self.all_scores(), self.is_anomaly) if y is not None else None
        if metrics is not None and metrics["n_labelled_anomalies"] == 0:
            notes.append("no labelled anomalies in this batch: recall, F1 and AUROC are undefined")
        flagged = self.flagged if self.is_anomaly is None else int(self.is_anomaly.sum())
        self.is_anomaly = self.q_value = None  # type: ignore[assignment]
        health = batch_health(
            self.ks,
            det.calibration_scores_,
            self.health_count,
            self.health_level,
            unit=det.unit,
            unflagged=self.unflagged_ks,
        )
        if health.warning:
            notes.append(health.warning)
        segments = self._segment_summary(notes) if self.segments is not None else None
        n = self.ks.n  # the rows scored
        return ScoreSummary(
            input=self.source,
            report=str(target),
            rows=self.rows,
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
            **extra,
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


def spread(values: Any, read: np.ndarray, fill: Any = np.nan) -> Any:
    """``values`` of the rows read, at their places among all rows (``fill`` elsewhere)."""
    if values is None or read.all():
        return values
    out = np.full(len(read), fill, dtype=values.dtype)
    out[read] = values
    return out
