"""Deterministic per-row anomaly scores (higher = more anomalous).

The Monte Carlo noise is a fixed set of draws, generated on the CPU from a fixed seed and
shared by every row, so a row's score depends only on the model and the row: the same on
every call, in every batch, on every device (up to float rounding of the device).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from vae.elbo import feature_nll, iwae_log_likelihood, negative_elbo
from vae.model import TabularBatch, TabularVAE

SCORE_METHODS = ("elbo", "iwae", "recon")
EPS_SEED = 20140101  # seed of the fixed draws; part of the score's definition


def fixed_eps(latent_dim: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(k, 1, latent_dim) standard-normal draws from a fixed seed, made on the CPU."""
    gen = torch.Generator().manual_seed(EPS_SEED)
    return torch.randn((k, 1, latent_dim), generator=gen).to(device)


@torch.no_grad()
def score_rows(model: TabularVAE, batch: TabularBatch, method: str = "elbo", k: int = 16) -> torch.Tensor:
    """(n,) anomaly score of each row.

    Methods:
        ``elbo``: negative ELBO, k fixed draws (the default);
        ``iwae``: negative importance-weighted log-likelihood with k fixed draws;
        ``recon``: reconstruction negative log-likelihood at the posterior mean (no KL).
    """
    model.eval()
    device = next(model.parameters()).device
    batch = batch.to(device)
    if method == "elbo":
        return negative_elbo(model, batch, fixed_eps(model.config.latent_dim, k, device))
    if method == "iwae":
        return -iwae_log_likelihood(model, batch, fixed_eps(model.config.latent_dim, k, device))
    if method == "recon":
        mu, _ = model.encode(batch)
        return feature_nll(model, batch, mu).sum(dim=1)
    raise ValueError(f"score method must be one of {SCORE_METHODS}, got {method!r}")


@torch.no_grad()
def feature_contributions(
    model: TabularVAE, batch: TabularBatch
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
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
    nll = feature_nll(model, batch, mu)
    mean, logits = model.decode(mu)
    return nll.cpu().numpy(), mean.float().cpu().numpy(), [lg.argmax(dim=1).cpu().numpy() for lg in logits]


@torch.no_grad()
def posterior_means(model: TabularVAE, batch: TabularBatch, chunk: int = 65536) -> np.ndarray:
    """(n, latent_dim) float64 posterior means mu(x) of q(z | x) (deterministic: no sampling)."""
    model.eval()
    device = next(model.parameters()).device
    out = [model.encode(batch.rows(slice(s, s + chunk)).to(device))[0].double().cpu().numpy()
           for s in range(0, len(batch), chunk)]
    return np.concatenate(out) if out else np.zeros((0, model.config.latent_dim))


def score_batches(
    model: TabularVAE, batches: Iterator[TabularBatch], method: str = "elbo", k: int = 16
) -> np.ndarray:
    """Scores of every row of every batch, concatenated, as float64 (n_total,)."""
    out = [score_rows(model, b, method, k).double().cpu().numpy() for b in batches]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)
