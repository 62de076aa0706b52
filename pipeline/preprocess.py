"""Preprocessing fitted on training rows only: standardisation and category vocabularies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.schema import Schema
from vae.model import MISSING, UNSEEN, TabularBatch


@dataclass
class Preprocessor:
    """Maps validated feature frames to :class:`TabularBatch` tensors.

    Numeric: (x - mean) / std with std = 1 for constant columns (so a constant column maps
    to 0 and any other value stands out). Categorical: the training vocabulary, codes in
    sorted order; missing -> MISSING (left out of the likelihood), unseen -> UNSEEN.
    """

    schema: Schema
    mean_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    std_: np.ndarray = field(default_factory=lambda: np.ones(0))
    vocab_: dict[str, list[str]] = field(default_factory=dict)

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
        return {"mean": self.mean_.tolist(), "std": self.std_.tolist(), "vocab": self.vocab_}

    @classmethod
    def from_dict(cls, schema: Schema, d: dict[str, Any]) -> Preprocessor:
        return cls(
            schema=schema,
            mean_=np.asarray(d["mean"], dtype=np.float64),
            std_=np.asarray(d["std"], dtype=np.float64),
            vocab_={k: list(v) for k, v in d["vocab"].items()},
        )
