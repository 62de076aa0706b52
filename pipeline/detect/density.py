"""Density terms of the score: k-NN distance from a row's code to the training rows' codes.

The code is what a VAE's encoder makes of a row: its posterior mean mu(x) (``latent``) or, by
default for tables and (as conv feature maps) for images, the encoder's last hidden activations.
The encoder maps normal training rows to a narrow region, much narrower than the prior N(0, I) that
the ELBO's KL term measures against; a row whose code lands where no training row's does is in a
low-density region even when the decoder reconstructs it well. The k-NN density estimate
p(c) ~ k / (N V_d r_k(c)^d) (Loftsgaarden & Quesenberry 1965) ranks rows by r_k(c), the distance from
the row's code to the k-th nearest reference code (Euclidean, exact: FAISS's flat index). Distances
between codes scaled to unit length compare the pattern of activations and ignore their size; centred first
on the mean reference code, they compare how a row's activations differ from the typical row's (:class:`DensityTerms`).

The combined score of one VAE is  (-ELBO(x) - m_E) / s_E + sum_j w_j (r_j(x) - m_j) / s_j,  each term
standardised by its median m and interquartile range s on the validation rows (held out from the
weights); the table detector by default replaces the first part by the mean of the standardised -ELBO
and the standardised masked conditional NLL (:func:`vae.score.conditional_nll`). The conformal
threshold is then set on the combined score of the calibration rows (held out from the weights and the
standardisation). Where validation or calibration rows are also references, their own distance leaves
themselves out, so it is what a new row's would be.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MAX_REFERENCE_ROWS = 100_000  # training codes kept per VAE (a seeded subsample beyond this)
SEARCH_THREADS = 2


_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def search_pool() -> ThreadPoolExecutor:
    """Background threads (per process) for the k-NN searches, which release the GIL: scoring overlaps
    the searches of one VAE with the next VAE's forward passes. ``SEARCH_THREADS`` of them: a VAE's two
    searches cost about 1.3x its forward passes on the CPU, so one thread left the searches behind.

    A forked child (multiprocessing, Dask workers) gets a pool of its own: the parent's threads do
    not exist there, and work given to the parent's pool would never run.
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            pool = ThreadPoolExecutor(max_workers=SEARCH_THREADS, thread_name_prefix="vae-anomaly-knn")
            _POOL = (os.getpid(), pool)
        return _POOL[1]


def reference_rows(n: int, seed: int, cap: int = MAX_REFERENCE_ROWS) -> np.ndarray:
    """Sorted positions of at most ``cap`` of ``n`` training rows (all of them when n <= cap)."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def finite_references(n: int, pick: np.ndarray, codes: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Which of ``n`` rows are references, and their codes: the rows at positions ``pick`` (m,) whose code
    is finite under every VAE (a row with a value far outside the data can overflow an encoder), with one
    (m, d) code array per VAE filtered alike, so every VAE has the same references. A row left out is
    scored like a new row; a row that is a reference is measured leaving itself out (see
    :meth:`DensityTerms._distances`).

    Returns:
        (n,) bool, True for the reference rows, and the kept codes of each VAE.
    """
    ok = np.ones(len(pick), dtype=bool)
    for c in codes:
        ok &= np.isfinite(c).all(axis=1)
    if not ok.all():
        pick, codes = pick[ok], [c[ok] for c in codes]
    own = np.zeros(n, dtype=bool)
    own[pick] = True
    return own, codes


class LatentKNN:
    """k-th nearest-neighbour distance to a fixed set of codes: an exact search (FAISS ``IndexFlatL2``, float32
    squared distances, one thread, so a row's distance does not depend on the machine's core count).

    Args:
        codes: (m, d) reference codes (m >= 1).
        k: neighbour rank (clipped to m).
    """

    def __init__(self, codes: np.ndarray, k: int) -> None:
        import faiss

        if k < 1:
            raise ValueError(f"latent k must be >= 1, got {k!r}")
        codes = np.ascontiguousarray(codes, dtype=np.float32)
        if codes.ndim != 2 or len(codes) == 0:
            raise ValueError(f"reference codes must be a non-empty (m, d) array, got shape {codes.shape}")
        self.codes = codes
        self.k = min(int(k), len(codes))
        self._index = faiss.IndexFlatL2(codes.shape[1])
        self._index.add(codes)

    def distance(self, z: np.ndarray, rank: int | None = None) -> np.ndarray:
        """(n,) float64 distance from each row of z: (n, d) to its k-th nearest reference code (or its
        ``rank``-th, clipped to the number of codes: rows that are references themselves pass k + 1).

        A row whose code is not finite (the encoder overflowed on a value far outside the training
        data) gets an infinite distance, so its score is not finite and scoring names the row.
        """
        rank = self.k if rank is None else min(int(rank), len(self.codes))
        z = np.asarray(z)
        ok = np.isfinite(z).all(axis=1)
        if ok.all():  # the usual case: no copy of the rows
            return self._search(z, rank)
        out = np.full(len(z), np.inf)
        if ok.any():
            out[ok] = self._search(z[ok], rank)
        return out

    def _search(self, z: np.ndarray, rank: int) -> np.ndarray:
        import faiss

        if len(z) == 0:
            return np.zeros(0)
        faiss.omp_set_num_threads(1)
        squared, _ = self._index.search(np.ascontiguousarray(z, dtype=np.float32), rank)
        return np.sqrt(np.maximum(squared[:, rank - 1], 0.0)).astype(np.float64)


def unit_rows(codes: np.ndarray) -> np.ndarray:
    """(n, d) float32 codes scaled to unit length (an all-zero row stays zero)."""
    c = np.asarray(codes, dtype=np.float64)
    return (c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class DensityTerms:
    """The density terms' bookkeeping, shared by the table and image detectors.

    The detector sets ``density_space`` (``latent``: one term on posterior means; any other space: the
    codes as they are, the same at unit length and, with ``centred_weight`` > 0, centred on the mean
    reference code, then at unit length), ``latent_k``, ``latent_weight``, ``cosine_weight`` (and the
    table detector ``centred_weight``; 0 by default here), and after fitting ``latent_codes_`` (one (m, d) array of
    reference codes per VAE). A term of weight 0 is not searched: its distance is 0.
    """

    density_space: str
    latent_k: int
    latent_weight: float
    cosine_weight: float
    latent_codes_: list[np.ndarray]
    centred_weight: float = 0.0  # the table detector sets it; the image detector has no centred term
    _knn: list[list[LatentKNN | None]] | None
    _centre: list[np.ndarray] | None = None

    def density_weights(self) -> list[float]:
        """The weight of each density term: ``[latent_weight]`` in the latent space; otherwise
        ``[latent_weight, cosine_weight]`` (the codes as they are, then at unit length), and
        ``centred_weight`` after them when it is > 0 (centred codes at unit length)."""
        if self.density_space == "latent":
            return [self.latent_weight]
        w = [self.latent_weight, self.cosine_weight]
        return [*w, self.centred_weight] if self.centred_weight > 0 else w

    def _term_codes(self, i: int, codes: np.ndarray) -> list[np.ndarray | None]:
        """VAE i's codes of each density term (None for a term of weight 0)."""
        out: list[np.ndarray | None] = []
        for j, w in enumerate(self.density_weights()):
            if w == 0:
                out.append(None)
            elif j == 0:
                out.append(codes)
            elif j == 1:
                out.append(unit_rows(codes))
            else:
                out.append(unit_rows(np.asarray(codes, dtype=np.float64) - self._centres()[i]))
        return out

    def _centres(self) -> list[np.ndarray]:
        """Per VAE, the mean of its reference codes (float64): the centre of the ``centred`` term."""
        if self._centre is None:
            self._centre = [np.asarray(c, dtype=np.float64).mean(axis=0) for c in self.latent_codes_]
        return self._centre

    def _latent_knns(self) -> list[list[LatentKNN | None]]:
        """Per VAE, one k-NN index per density term over its reference codes, built on first use (not saved)."""
        if getattr(self, "_knn", None) is None:
            self._knn = [
                [None if t is None else LatentKNN(t, self.latent_k) for t in self._term_codes(i, c)]
                for i, c in enumerate(self.latent_codes_)
            ]
        return self._knn

    def _distances(self, i: int, codes: np.ndarray, own: np.ndarray | None = None) -> list[np.ndarray]:
        """VAE i's k-NN distance of each density term, (n,) each, for its codes (n, d) of n rows. Rows marked
        in ``own`` (n,) are references themselves: measured to the (k+1)-th nearest, leaving themselves out."""
        out = []
        for knn, c in zip(self._latent_knns()[i], self._term_codes(i, codes), strict=True):
            if knn is None or c is None:
                out.append(np.zeros(len(codes)))
            elif own is None or not own.any():
                out.append(knn.distance(c))
            else:
                d = np.empty(len(c))
                d[~own] = knn.distance(c[~own])
                d[own] = knn.distance(c[own], rank=self.latent_k + 1)
                out.append(d)
        return out


def robust_scale(values: np.ndarray) -> tuple[float, float]:
    """(median, spread) of values: (n,); the spread is the interquartile range.

    Where more than half the values are equal (a validation set with many duplicate rows gives most of
    them the distance 0 to a twin), the interquartile range is 0 and would blow the term up to dominate
    the sum; the spread is then the mean absolute deviation from the median times 1.69 (the ratio of the
    two for a normal distribution), and 1 where all the values are equal (or n = 0).
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return 0.0, 1.0
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    tiny = 1e-9 * max(1.0, abs(float(q50)))
    spread = float(q75 - q25)
    if not spread > tiny:
        spread = float(1.69 * np.mean(np.abs(v - q50)))
    if not spread > tiny:
        spread = 1.0
    return float(q50), spread
