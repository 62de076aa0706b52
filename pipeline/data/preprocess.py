"""Preprocessing fitted on training rows only: standardisation and category vocabularies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.data.schema import Schema
from vae.model import MISSING, UNSEEN, TabularBatch


@dataclass
class Preprocessor:
    """Maps validated feature frames to :class:`TabularBatch` tensors.

    Numeric, ``scaling="standard"``: (x - mean) / std with std = 1 for constant columns (so a
    constant column maps to 0 and any other value stands out). ``scaling="quantile"``: the
    standardised value is mapped through a monotone piecewise-linear map fitted on the training
    rows that sends the empirical quantile q of a value to Phi^-1(q) (a Gaussian rank transform,
    tied values share the mean of their levels); outside the training range it continues
    linearly with slope 1 / (IQR / 1.349) in standardised units, so values beyond anything seen
    in training stay extreme. Categorical: the training vocabulary, codes in
    sorted order; missing -> MISSING (left out of the likelihood), unseen -> UNSEEN.
    """

    schema: Schema
    mean_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    std_: np.ndarray = field(default_factory=lambda: np.ones(0))
    vocab_: dict[str, list[str]] = field(default_factory=dict)
    scaling: str = "standard"
    knots_: list[tuple[list[float], list[float], float]] = field(default_factory=list)

    def fit(self, features: pd.DataFrame) -> Preprocessor:
        """Learn scaling and vocabularies from ``features`` (the output of Schema.validate)."""
        if self.schema.numeric:
            x = features[list(self.schema.numeric)].to_numpy(dtype=np.float64)
            with np.errstate(all="ignore"):
                mean = np.nanmean(x, axis=0)
                std = np.nanstd(x, axis=0)
            mean = np.where(np.isfinite(mean), mean, 0.0)
            std = np.where(np.isfinite(std) & (std > 1e-12 * np.maximum(1.0, np.abs(mean))), std, 1.0)
            self.mean_, self.std_ = mean, std
            if self.scaling == "quantile":
                z = (x - mean) / std
                self.knots_ = [_quantile_knots(z[np.isfinite(z[:, j]), j]) for j in range(z.shape[1])]
            elif self.scaling != "standard":
                raise ValueError(f"scaling must be 'standard' or 'quantile', got {self.scaling!r}")
        else:
            self.mean_, self.std_ = np.zeros(0), np.ones(0)
        self.vocab_ = {}
        for c in self.schema.categorical:
            values = features[c].dropna().unique().tolist()
            self.vocab_[c] = sorted(str(v) for v in values) or ["<none>"]
        return self

    @property
    def cardinalities(self) -> tuple[int, ...]:
        return tuple(len(self.vocab_[c]) for c in self.schema.categorical)

    def transform(self, features: pd.DataFrame) -> TabularBatch:
        """(n rows) -> TabularBatch on the CPU."""
        n = len(features)
        if self.schema.numeric:
            x = features[list(self.schema.numeric)].to_numpy(dtype=np.float64)
            mask = np.isfinite(x)
            z = np.where(mask, (x - self.mean_) / self.std_, 0.0)
            if self.scaling == "quantile":
                z = np.stack([_apply_knots(z[:, j], *k) for j, k in enumerate(self.knots_)], axis=1)
                z = np.where(mask, z, 0.0)
        else:
            z = np.zeros((n, 0))
            mask = np.zeros((n, 0), dtype=bool)
        codes = np.empty((n, len(self.schema.categorical)), dtype=np.int64)
        for j, c in enumerate(self.schema.categorical):
            col = features[c]
            known = pd.Categorical(col, categories=self.vocab_[c]).codes.astype(np.int64)
            present = col.notna().to_numpy()
            codes[:, j] = np.where(known >= 0, known, np.where(present, UNSEEN, MISSING))
        return TabularBatch(
            torch.from_numpy(z.astype(np.float32)),
            torch.from_numpy(mask.astype(np.float32)),
            torch.from_numpy(codes),
        )

    def inverse_numeric(self, z: np.ndarray) -> np.ndarray:
        """Standardised numeric values (n, n_numeric) back to data units."""
        return z * self.std_ + self.mean_

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean_.tolist(),
            "std": self.std_.tolist(),
            "vocab": self.vocab_,
            "scaling": self.scaling,
            "knots": [[list(a), list(b), s] for a, b, s in self.knots_],
        }

    @classmethod
    def from_dict(cls, schema: Schema, d: dict[str, Any]) -> Preprocessor:
        return cls(
            schema=schema,
            mean_=np.asarray(d["mean"], dtype=np.float64),
            std_=np.asarray(d["std"], dtype=np.float64),
            vocab_={k: list(v) for k, v in d["vocab"].items()},
            scaling=str(d.get("scaling", "standard")),
            knots_=[([float(v) for v in a], [float(v) for v in b], float(s)) for a, b, s in d.get("knots", [])],
        )


N_QUANTILES = 1000


def _quantile_knots(z: np.ndarray) -> tuple[list[float], list[float], float]:
    """Knots (xs, ys, tail slope) of the Gaussian rank map of one standardised column z: (n,)."""
    if len(z) == 0:
        return [0.0], [0.0], 1.0
    from statistics import NormalDist

    levels = (np.arange(N_QUANTILES) + 0.5) / N_QUANTILES
    xs = np.quantile(z, levels)
    ux, inv = np.unique(xs, return_inverse=True)  # tied quantiles share the mean of their levels
    lv = np.bincount(inv, weights=levels) / np.bincount(inv)
    ys = np.array([NormalDist().inv_cdf(float(q)) for q in lv]) if len(ux) > 1 else np.zeros(1)
    q25, q75 = np.quantile(z, [0.25, 0.75])
    iqr = (q75 - q25) / 1.349
    slope = 1.0 / iqr if iqr > 1e-9 else 1.0
    return ux.tolist(), ys.tolist(), float(slope)


def _apply_knots(z: np.ndarray, xs: list[float], ys: list[float], slope: float) -> np.ndarray:
    """Monotone piecewise-linear map through (xs, ys), linear with ``slope`` outside [xs[0], xs[-1]]."""
    x0, x1, y0, y1 = xs[0], xs[-1], ys[0], ys[-1]
    out = np.interp(z, xs, ys) if len(xs) > 1 else np.full_like(z, y0)
    out = np.where(z < x0, y0 + (z - x0) * slope, out)
    return np.where(z > x1, y1 + (z - x1) * slope, out)
