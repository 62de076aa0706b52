"""Scoring and explaining rows with a fitted table detector: each VAE's pass, the ensemble's score, attribution."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.calibrate.segments import segment_values
from pipeline.detect.density import search_pool
from pipeline.detect.ensemble import EnsembleDetector
from pipeline.errors import InputError
from vae.model import MISSING, TabularBatch, TabularVAE
from vae.score import MemberPass, conditional_nll, decoded_means, encoder_features, posterior_means, score_pass

SCORE_CHUNK = 32768


@dataclass(frozen=True)
class Explanation:
    """Per-feature attribution of rows, features in schema order (numeric, then categorical).

    Attributes:
        nll: (n, n_features) -log p(x_j | z = mu(x)), mean over the ensemble.
        excess: (n, n_features) nll above the median of normal calibration rows, floored at 0;
            a feature's share of a row's anomaly is its excess over the row's total excess.
        expected_numeric: (n, n_numeric) the decoded mean of each numeric feature, in data units,
            with the row's top feature (largest excess) masked out of the encoder input, so that
            for that feature it is the model's expectation given the other features.
        likely_codes: per categorical feature, (n,) the code of the most likely category (same masking).
    """

    nll: np.ndarray
    excess: np.ndarray
    expected_numeric: np.ndarray
    likely_codes: list[np.ndarray]


class TableScoring(EnsembleDetector):
    """The table detector's scores, attribution and per-segment thresholds (fitted by its subclass)."""

    def segment_codes(self, frame: pd.DataFrame) -> np.ndarray | None:
        """(n,) each row's segment code (:meth:`pipeline.calibrate.segments.Segments.codes`), or None without segments.

        Raises:
            InputError: ``frame`` lacks the segment column.
        """
        if self.segments_ is None:
            return None
        if self.segments_.column not in frame.columns:
            raise InputError(
                f"missing segment column {self.segments_.column!r}: this model has a threshold per segment"
            )
        return self.segments_.codes(segment_values(frame[self.segments_.column]))

    def thresholds(self, data: pd.DataFrame) -> np.ndarray | float:
        """Each row's threshold at ``alpha``: its segment's, or ``threshold_`` (pooled) for a small or unseen
        segment and for a model without segments."""
        codes = self.segment_codes(data)
        if codes is None or self.segments_ is None:
            return self.threshold_
        out = np.full(len(data), self.threshold_, dtype=np.float64)
        for j, t in enumerate(self.segments_.thresholds(self.alpha)):
            if t is not None:
                out[codes == j] = t
        return out

    def _density_codes(self, model: TabularVAE, batch: TabularBatch) -> np.ndarray:
        """(n, d) float64 codes of the rows for the density terms: mu(x) or the encoder's last hidden layer."""
        if self.density_space == "latent":
            return posterior_means(model, batch)
        return encoder_features(model, batch)

    def _pass_codes(self, p: MemberPass) -> np.ndarray:
        return (p.mu if self.density_space == "latent" else p.features).double().cpu().numpy()

    # ------------------------------------------------------------- scoring
    def _batches(self, features: pd.DataFrame):
        for start in range(0, len(features), SCORE_CHUNK):
            yield self.preprocessor_.transform(features.iloc[start : start + SCORE_CHUNK])

    def score_validated(self, features: pd.DataFrame) -> np.ndarray:
        out = [self._combine(*self._passes(b, explain=False)) for b in self._batches(features)]
        return np.concatenate(out) if out else np.zeros(0)

    def _calibration_pass(self, batch: TabularBatch, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores (n,) and per-feature NLL (n, n_features) of the calibration rows in one pass per chunk.

        The rows marked in ``own`` (n,) are density references themselves: their distances leave
        themselves out, so their scores are what new rows' would be.
        """
        scores, nll = [], []
        for start in range(0, len(batch), SCORE_CHUNK):
            part = slice(start, start + SCORE_CHUNK)
            passes, searches = self._passes(batch.rows(part), explain=True, own=own[part])
            nll.append(member_nll(passes))
            scores.append(self._combine(passes, searches))
        return np.concatenate(scores), np.concatenate(nll)

    def explain_validated(self, features: pd.DataFrame) -> Explanation:
        """Per-feature attribution of validated rows (see :class:`Explanation`)."""
        self._check_fitted()
        return self._explain(features)

    def score_and_explain(self, features: pd.DataFrame) -> tuple[np.ndarray, Explanation]:
        """Scores and attribution of validated rows in one pass: each VAE encodes each chunk once for
        the score, the latent term and the attribution, and once more with the top feature masked."""
        self._check_fitted()
        scores, parts = [], []
        for b in self._batches(features):
            passes, searches = self._passes(b, explain=True)
            parts.append(self._explain_batch(b, passes))  # while the last VAE's k-NN search runs
            scores.append(self._combine(passes, searches))
        return (np.concatenate(scores) if scores else np.zeros(0)), self._join(parts)

    def _explain(self, features: pd.DataFrame) -> Explanation:
        return self._join(
            [self._explain_batch(b, self._passes(b, explain=True, search=False)[0]) for b in self._batches(features)]
        )

    def _join(self, parts: list[Explanation]) -> Explanation:
        if not parts:
            k = len(self.schema_.features)
            return Explanation(
                np.zeros((0, k)),
                np.zeros((0, k)),
                np.zeros((0, len(self.schema_.numeric))),
                [np.zeros(0, dtype=np.int64) for _ in self.schema_.categorical],
            )
        return Explanation(
            np.concatenate([p.nll for p in parts]),
            np.concatenate([p.excess for p in parts]),
            np.concatenate([p.expected_numeric for p in parts]),
            [np.concatenate([p.likely_codes[j] for p in parts]) for j in range(len(self.schema_.categorical))],
        )

    def _passes(
        self,
        batch: TabularBatch,
        explain: bool,
        search: bool = True,
        own: np.ndarray | None = None,
        only: int | None = None,
    ) -> tuple[list[MemberPass], list[Future[np.ndarray]]]:
        """One :func:`vae.score.score_pass` per VAE of the ensemble (or of VAE ``only``); with the latent term
        on, each VAE's k-NN distances are searched in a background thread while the next VAE runs (both release
        the GIL).

        Returns the passes and, with the density terms on, each VAE's search for its k-NN distances
        (else []): :meth:`_combine` waits for them, so the caller can do other work in between. Rows
        marked in ``own`` are references themselves and are measured leaving themselves out.
        """
        passes, searches = [], []
        if self.latent_k and search:
            self._latent_knns()  # built here, once, not by the search threads at the same time
        for i, m in enumerate(self.models_):
            if only is not None and i != only:
                continue
            p = score_pass(m, batch, self.score_method, self.n_draws, explain=explain)
            if self.latent_k and search:
                searches.append(search_pool().submit(self._distances, i, self._pass_codes(p), own))
                if self.conditional_groups:  # while the search runs
                    p = p._replace(cond=conditional_nll(m, batch, self.conditional_groups))
            passes.append(p)
        return passes, searches

    def _explain_batch(self, batch: TabularBatch, passes: list[MemberPass]) -> Explanation:
        nll = member_nll(passes)
        baseline = getattr(self, "feature_nll_baseline_", None)
        excess = np.maximum(nll - (baseline if baseline is not None else 0.0), 0.0)
        # What the model expects for each row's top feature given the *other* features: that cell is
        # masked out (left out of the encoder input), then decoded at the posterior mean.
        top = excess.argmax(axis=1)
        n_num = self.model_config_.n_numeric
        rows = np.arange(len(top))
        mask, codes = batch.mask_num.clone(), batch.x_cat.clone()
        num_rows = top < n_num
        mask[rows[num_rows], top[num_rows]] = 0.0
        codes[rows[~num_rows], top[~num_rows] - n_num] = MISSING
        masked = TabularBatch(batch.x_num, mask, codes)
        members = [decoded_means(m, masked) for m in self.models_]
        expected = self.preprocessor_.inverse_numeric(np.mean([m[0] for m in members], axis=0))
        likely = list(members[0][1])  # the first member's most likely category
        return Explanation(nll, excess, expected, likely)

    def _combine(self, passes: list[MemberPass], searches: list[Future[np.ndarray]]) -> np.ndarray:
        """The detector's score (:meth:`_ensemble_score`) of every VAE's pass."""
        return self._ensemble_score(self._member_scores(passes, searches))

    def _member_scores(
        self, passes: list[MemberPass], searches: list[Future[np.ndarray]], only: int | None = None
    ) -> np.ndarray:
        """(len(passes), n) each VAE's score (of VAE ``only`` when the passes are its alone): its -ELBO (or IWAE
        / recon) score, plus its density terms when on (:meth:`EnsembleDetector._member_total`)."""
        member = [p.score.double().cpu().numpy() for p in passes]
        if self.latent_k:
            for j, search in enumerate(searches):
                i = j if only is None else only
                cond = passes[j].cond
                cond_np = cond.cpu().numpy() if self.conditional_groups and cond is not None else None
                member[j] = self._member_total(i, member[j], search.result(), cond_np)
        return np.asarray(member)

    def score_samples(self, df: pd.DataFrame, source: str = "input") -> np.ndarray:
        """(n,) raw anomaly scores, higher = more anomalous; deterministic.

        Raises:
            SchemaError: ``df`` does not match the training schema.
        """
        self._check_fitted()
        return self.score_validated(self.schema_.validate(df, source=source, require_ids=False))

    def batch(self, df: pd.DataFrame) -> TabularBatch:
        """The encoded tensors of ``df`` (for sampling, reconstructions and plots)."""
        self._check_fitted()
        return self.preprocessor_.transform(self.schema_.validate(df, require_ids=False))


def member_nll(passes: list[MemberPass]) -> np.ndarray:
    """(n, n_features) per-feature NLL at the posterior mean, the mean over the VAEs' passes (made with explain)."""
    return np.mean([p.nll.cpu().numpy() for p in passes if p.nll is not None], axis=0)
