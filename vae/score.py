"""Deterministic per-row anomaly scores (higher = more anomalous).

The Monte Carlo noise is a fixed set of draws, generated on the CPU from a fixed seed and
shared by every row, so a row's score depends only on the model and the row: the same on
every call, in every batch, on every device (up to float rounding of the device).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch

from vae.elbo import decoded_feature_nll, feature_nll, iwae_log_likelihood, negative_elbo
from vae.model import MISSING, TabularBatch, TabularVAE
from vae.trainer import fixed_eps

SCORE_METHODS = ("elbo", "iwae", "recon")


class MemberPass(NamedTuple):
    """What one VAE gives a batch of rows in one pass (one encoder pass shared by all three)."""

    score: torch.Tensor
    """(n,) anomaly score (see :func:`score_rows`)."""
    mu: torch.Tensor
    """(n, latent_dim) posterior means mu(x)."""
    nll: torch.Tensor | None
    """(n, n_numeric + n_categorical) per-feature -log p(x_j | z = mu(x)), when asked for."""
    features: torch.Tensor
    """(n, hidden[-1]) the encoder's last hidden layer (see :meth:`TabularVAE.encoder_features`)."""
    cond: torch.Tensor | None = None
    """(n,) the masked conditional NLL (:func:`conditional_nll`), when the caller adds it."""


@torch.no_grad()
def score_pass(
    model: TabularVAE, batch: TabularBatch, method: str = "elbo", k: int = 16, explain: bool = False
) -> MemberPass:
    """Score, posterior means and (with ``explain``) per-feature NLL at the posterior mean, encoding once.

    The values are exactly those of :func:`score_rows`, :func:`posterior_means` and
    :func:`feature_contributions` called one by one on the same batch.
    """
    if method not in SCORE_METHODS:
        raise ValueError(f"score method must be one of {SCORE_METHODS}, got {method!r}")
    model.eval()
    device = next(model.parameters()).device
    batch = batch.to(device)
    features = model.encoder_features(batch)
    mu, log_var = model.posterior(features)
    nll = feature_nll(model, batch, mu) if explain or method == "recon" else None
    if method == "elbo":
        score = negative_elbo(model, batch, fixed_eps(model.config.latent_dim, k, device), posterior=(mu, log_var))
    elif method == "iwae":
        score = -iwae_log_likelihood(
            model, batch, fixed_eps(model.config.latent_dim, k, device), posterior=(mu, log_var)
        )
    else:
        assert nll is not None
        score = nll.sum(dim=1)
    return MemberPass(score, mu, nll if explain else None, features)


@torch.no_grad()
def conditional_nll(model: TabularVAE, batch: TabularBatch, groups: int) -> torch.Tensor:
    """(n,) sum over feature groups g of -log p(x_g | z = mu(x without g)), a masked pseudo-likelihood.

    Feature j (the columns of :func:`vae.elbo.feature_nll`: numeric, then categorical) is in group
    ``j % G``, ``G = min(groups, n_features)``. For each group its cells are hidden from the encoder (as
    missing cells are: the masked ELBO's inputs) and its features' NLL is taken at the posterior mean of
    the rest. A value that breaks the row's dependence structure cannot pull the code towards itself, as
    it does in the -ELBO, where the encoder sees it; cells missing in ``batch`` add 0.
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups!r}")
    model.eval()
    device = next(model.parameters()).device
    batch = batch.to(device)
    n_num, n_feat = model.config.n_numeric, model.config.n_numeric + len(model.config.cat_cardinalities)
    g = min(groups, n_feat)
    group = torch.arange(n_feat, device=device) % g
    total = torch.zeros(len(batch), dtype=torch.float64, device=device)
    for k in range(g):
        hide = group == k
        mask = batch.mask_num * (~hide[:n_num]).to(batch.mask_num.dtype)
        codes = torch.where(hide[n_num:].unsqueeze(0), torch.full_like(batch.x_cat, MISSING), batch.x_cat)
        mu, _ = model.encode(TabularBatch(batch.x_num, mask, codes))
        total += (feature_nll(model, batch, mu) * hide.to(torch.float32)).sum(dim=1).double()
    return total


def score_rows(model: TabularVAE, batch: TabularBatch, method: str = "elbo", k: int = 16) -> torch.Tensor:
    """(n,) anomaly score of each row.

    Methods:
        ``elbo``: negative ELBO, k fixed draws (the default);
        ``iwae``: negative importance-weighted log-likelihood with k fixed draws;
        ``recon``: reconstruction negative log-likelihood at the posterior mean (no KL).
    """
    return score_pass(model, batch, method, k).score


@torch.no_grad()
def decoded_means(model: TabularVAE, batch: TabularBatch) -> tuple[np.ndarray, list[np.ndarray]]:
    """The decoded expectation at the posterior mean: numeric means (n, n_numeric) in the model's
    standardised units, and one (n,) array per categorical feature with its most likely code."""
    model.eval()
    device = next(model.parameters()).device
    mean, logits = model.decode(model.encode(batch.to(device))[0])
    return mean.float().cpu().numpy(), [lg.argmax(dim=1).cpu().numpy() for lg in logits]


@torch.no_grad()
def feature_contributions(model: TabularVAE, batch: TabularBatch) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per-feature negative log-likelihood at the posterior mean, and the decoded expectation.

    Returns:
        nll: (n, n_numeric + n_categorical) -log p(x_j | z = mu(x)).
        expected: (n, n_numeric) decoded numeric means (in the model's standardised units).
        likely: one (n,) array per categorical feature: the code of its most likely category.
    """
    model.eval()
    device = next(model.parameters()).device
    batch = batch.to(device)
    mu, _ = model.encode(batch)
    mean, logits = model.decode(mu)
    nll = decoded_feature_nll(model, batch, mean, logits)
    return nll.cpu().numpy(), mean.float().cpu().numpy(), [lg.argmax(dim=1).cpu().numpy() for lg in logits]


def posterior_means(model: TabularVAE, batch: TabularBatch, chunk: int = 65536) -> np.ndarray:
    """(n, latent_dim) float64 posterior means mu(x) of q(z | x) (deterministic: no sampling)."""
    return _encoded(model, batch, chunk, lambda b: model.encode(b)[0], model.config.latent_dim)


def latent_variances(model: TabularVAE, batch: TabularBatch) -> np.ndarray:
    """(latent_dim,) variance over the rows of each dimension of the posterior mean mu(x).

    A dimension whose variance is near 0 is inactive (collapsed onto the prior): q(z | x) is the same for
    every row there, so it carries nothing about x (Burda, Grosse & Salakhutdinov 2016 count a unit as
    active when this variance is above 0.01).
    """
    mu = posterior_means(model, batch)
    return mu.var(axis=0) if len(mu) else np.zeros(model.config.latent_dim)


def encoder_features(model: TabularVAE, batch: TabularBatch, chunk: int = 65536) -> np.ndarray:
    """(n, hidden[-1]) float64 activations of the encoder's last hidden layer (deterministic)."""
    return _encoded(model, batch, chunk, model.encoder_features, model.config.hidden[-1])


@torch.no_grad()
def _encoded(
    model: TabularVAE, batch: TabularBatch, chunk: int, encode: Callable[[TabularBatch], torch.Tensor], width: int
) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = [
        encode(batch.rows(slice(s, s + chunk)).to(device)).double().cpu().numpy() for s in range(0, len(batch), chunk)
    ]
    return np.concatenate(out) if out else np.zeros((0, width))


def score_batches(model: TabularVAE, batches: Iterator[TabularBatch], method: str = "elbo", k: int = 16) -> np.ndarray:
    """Scores of every row of every batch, concatenated, as float64 (n_total,)."""
    out = [score_rows(model, b, method, k).double().cpu().numpy() for b in batches]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)
