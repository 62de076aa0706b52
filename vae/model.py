"""The tabular VAE network (Kingma & Welling, 2014) for mixed numeric / categorical rows.

Encoder q(z | x) = N(mu(x), diag(exp(log_var(x)))); prior p(z) = N(0, I);
decoder p(x | z) = prod_j p(x_j | z) with
  - a Gaussian N(mean_j(z), exp(s_j)) for each numeric feature j, where s_j is a learned
    per-feature log-variance (one free parameter per feature, floored at ``min_log_var``);
  - a categorical Cat(softmax(logits_j(z))) for each categorical feature j.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from vae.config import ModelConfig

MISSING = -1  # code of a missing categorical cell: left out of the likelihood
UNSEEN = -2  # code of a category never seen in training


class TabularBatch(NamedTuple):
    """Rows of a table, already encoded as tensors.

    Attributes:
        x_num: (n, n_numeric) float32 standardised values, 0 where missing.
        mask_num: (n, n_numeric) float32, 1 where the value is observed, 0 where missing.
        x_cat: (n, n_categorical) int64 category codes in [0, K_j), or MISSING / UNSEEN.
    """

    x_num: torch.Tensor
    mask_num: torch.Tensor
    x_cat: torch.Tensor

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.x_num.shape[0])

    def to(self, device: torch.device | str) -> TabularBatch:
        return TabularBatch(*(t.to(device, non_blocking=True) for t in self))

    def rows(self, index: torch.Tensor | slice) -> TabularBatch:
        return TabularBatch(*(t[index] for t in self))


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w_in, w_out in itertools.pairwise(widths):
        layers += [nn.Linear(w_in, w_out), nn.SiLU()]
    return nn.Sequential(*layers)


class TabularVAE(nn.Module):
    """MLP VAE over mixed-type rows; knows nothing of training or scoring."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        hidden = list(config.hidden)
        self.encoder = _mlp([config.input_dim, *hidden])
        self.to_mu = nn.Linear(hidden[-1], config.latent_dim)
        self.to_log_var = nn.Linear(hidden[-1], config.latent_dim)
        self.decoder = _mlp([config.latent_dim, *reversed(hidden)])
        n_out = config.n_numeric + sum(config.cat_cardinalities)
        self.to_output = nn.Linear(hidden[0], n_out)
        # Learned per-feature log-variance of the numeric likelihood (homoscedastic in z).
        self.num_log_var = nn.Parameter(torch.zeros(config.n_numeric))

    def encoder_input(self, batch: TabularBatch) -> torch.Tensor:
        """(n, input_dim): observed numeric values (0 where missing), their mask, one-hot categories.

        A missing or unseen category is all zeros in its one-hot block.
        """
        parts = [batch.x_num * batch.mask_num, batch.mask_num]
        for j, k in enumerate(self.config.cat_cardinalities):
            codes = batch.x_cat[:, j]
            known = codes >= 0
            onehot = F.one_hot(codes.clamp(min=0), k).to(batch.x_num.dtype)
            parts.append(onehot * known.unsqueeze(1).to(batch.x_num.dtype))
        return torch.cat(parts, dim=1)

    def encoder_features(self, batch: TabularBatch) -> torch.Tensor:
        """(n, hidden[-1]) the encoder's last hidden layer: what the mu and log-variance heads read."""
        return self.encoder(self.encoder_input(batch))

    def posterior(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, log_var of q(z | x), each (n, latent_dim), from :meth:`encoder_features`."""
        # The clamp keeps exp(log_var) finite on rows far outside the training data.
        return self.to_mu(features), self.to_log_var(features).clamp(-12.0, 8.0)

    def encode(self, batch: TabularBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns mu, log_var of q(z | x), each (n, latent_dim)."""
        return self.posterior(self.encoder_features(batch))

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the numeric means (n, n_numeric) and one (n, K_j) logit tensor per categorical feature."""
        out = self.to_output(self.decoder(z))
        num_mean = out[:, : self.config.n_numeric]
        logits = list(torch.split(out[:, self.config.n_numeric :], list(self.config.cat_cardinalities), dim=1))
        return num_mean, logits

    def numeric_log_var(self) -> torch.Tensor:
        """(n_numeric,) the floored learned log-variances."""
        return self.num_log_var.clamp(min=self.config.min_log_var)

    @staticmethod
    def reparameterize(mu: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) supplied by the caller (so scoring can fix it)."""
        return mu + torch.exp(0.5 * log_var) * eps
