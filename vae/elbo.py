"""Terms of the evidence lower bound, written out.

For a row x with numeric part x_N (observed mask m) and categorical part x_C:

    ELBO(x) = E_{q(z|x)}[ log p(x | z) ] - KL( q(z|x) || p(z) )

    log p(x | z) = sum_{j in N} m_j * log N(x_j; mean_j(z), exp(s_j))
                 + sum_{j in C, x_j observed} log softmax(logits_j(z))[x_j]

    log N(x; m, exp(s)) = -1/2 * ( log(2 pi) + s + (x - m)^2 / exp(s) )

    or, with ModelConfig.likelihood (scale sigma = exp(s / 2)):
    log t_nu(x; m, sigma) = lgamma((nu+1)/2) - lgamma(nu/2) - 1/2 log(nu pi) - s/2
                            - (nu+1)/2 * log(1 + (x - m)^2 / (nu exp(s)))
    log Laplace(x; m, sigma) = -log 2 - s/2 - |x - m| / sigma

    KL( N(mu, diag(sigma^2)) || N(0, I) ) = 1/2 * sum_k ( mu_k^2 + sigma_k^2 - 1 - log sigma_k^2 )
    (Kingma & Welling 2014, Appendix B).

Missing cells (m_j = 0, or a MISSING category code) are left out of the likelihood:
the masked ELBO. A category never seen in training (UNSEEN) scores as surprising as the
least likely known category of that feature under the model.
The training loss is the mean over rows of -(E[log p(x|z)] - beta * KL).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from vae.fit_plan import ModelKind
from vae.model import MISSING, UNSEEN, TabularBatch, TabularVAE

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-cell negative log-density of N(mean, exp(log_var)), 0 where mask is 0. Shape of x."""
    return 0.5 * (_LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var)) * mask


def student_t_nll(
    x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, mask: torch.Tensor, nu: float
) -> torch.Tensor:
    """Per-cell negative log-density of a Student-t (nu, location mean, scale exp(log_var / 2))."""
    const = math.lgamma(nu / 2) - math.lgamma((nu + 1) / 2) + 0.5 * math.log(nu * math.pi)
    return (const + 0.5 * log_var + 0.5 * (nu + 1) * torch.log1p((x - mean) ** 2 * torch.exp(-log_var) / nu)) * mask


def laplace_nll(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-cell negative log-density of a Laplace (location mean, scale exp(log_var / 2))."""
    return (math.log(2.0) + 0.5 * log_var + (x - mean).abs() * torch.exp(-0.5 * log_var)) * mask


def numeric_nll(
    x: torch.Tensor,
    mean: torch.Tensor,
    log_var: torch.Tensor,
    mask: torch.Tensor,
    likelihood: str = "gaussian",
    nu: float = 4.0,
) -> torch.Tensor:
    """Per-cell negative log-density of the chosen numeric likelihood, 0 where mask is 0."""
    if likelihood == "student_t":
        return student_t_nll(x, mean, log_var, mask, nu)
    if likelihood == "laplace":
        return laplace_nll(x, mean, log_var, mask)
    return gaussian_nll(x, mean, log_var, mask)


def categorical_nll(codes: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(n,) negative log-probability of each code under softmax(logits) (n, K).

    MISSING contributes 0; UNSEEN contributes -log of the smallest known probability.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    picked = log_p.gather(1, codes.clamp(min=0).unsqueeze(1)).squeeze(1)
    nll = torch.where(codes == UNSEEN, -log_p.min(dim=1).values, -picked)
    return torch.where(codes == MISSING, torch.zeros_like(nll), nll)


def kl_standard_normal(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """(n,) KL(N(mu, diag(exp(log_var))) || N(0, I)), closed form."""
    return 0.5 * torch.sum(mu**2 + torch.exp(log_var) - 1.0 - log_var, dim=1)


def feature_nll(model: TabularVAE, batch: TabularBatch, z: torch.Tensor) -> torch.Tensor:
    """(n, n_numeric + n_categorical) per-feature negative log-likelihood -log p(x_j | z)."""
    return decoded_feature_nll(model, batch, *model.decode(z))


def decoded_feature_nll(
    model: TabularVAE, batch: TabularBatch, num_mean: torch.Tensor, logits: list[torch.Tensor]
) -> torch.Tensor:
    """:func:`feature_nll` from an already decoded ``model.decode(z)`` (numeric means, logits)."""
    parts = []
    if model.config.n_numeric:
        cfg = model.config
        parts.append(
            numeric_nll(batch.x_num, num_mean.float(), model.numeric_log_var(), batch.mask_num, cfg.likelihood, cfg.nu)
        )
    for j, lg in enumerate(logits):
        parts.append(categorical_nll(batch.x_cat[:, j], lg).unsqueeze(1))
    # Row-major like torch.cat's result (a decoder output can come back column-major): row sums then
    # add up in the same order whatever the number of parts, so scores do not depend on it.
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, dim=1)


def kl_free_bits(mu: torch.Tensor, log_var: torch.Tensor, free_bits: float) -> torch.Tensor:
    """(n,) sum_k max(KL_k, free_bits) of the per-dimension closed-form KL terms.

    Free bits (Kingma et al. 2016, Sec. C.8): a latent dimension costs at least ``free_bits``
    nats, so the optimiser gains nothing by collapsing it onto the prior. Training only.
    """
    kl_k = 0.5 * (mu**2 + torch.exp(log_var) - 1.0 - log_var)
    return torch.clamp(kl_k, min=free_bits).sum(dim=1)


def negative_elbo(
    model: TabularVAE,
    batch: TabularBatch,
    eps: torch.Tensor,
    beta: float = 1.0,
    free_bits: float = 0.0,
    posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(n,) -ELBO per row: Monte Carlo over k reparameterisation draws, KL in closed form.

    Args:
        eps: (k, n, latent_dim) draws per row, or (k, 1, latent_dim) draws shared by all
            rows (scoring shares them, so a row's score does not depend on its neighbours).
        beta: weight of the KL term (1.0 gives the true negative ELBO).
        free_bits: with > 0, the KL term is :func:`kl_free_bits` (a training loss, not the ELBO).
        posterior: ``model.encode(batch)`` when the caller has it already (saves an encoder pass).
    """
    mu, log_var = posterior if posterior is not None else model.encode(batch)
    if free_bits > 0:
        kl = kl_free_bits(mu.float(), log_var.float(), free_bits)
    else:
        kl = kl_standard_normal(mu.float(), log_var.float())
    recon = torch.stack([feature_nll(model, batch, model.reparameterize(mu, log_var, e)).sum(dim=1) for e in eps]).mean(
        dim=0
    )
    return recon + beta * kl


def iwae_log_likelihood(
    model: TabularVAE,
    batch: TabularBatch,
    eps: torch.Tensor,
    posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(n,) importance-weighted estimate of log p(x) with k draws, eps (k, 1 or n, latent_dim).

    log p(x) ~= log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x),  z_i = mu + sigma * eps_i
    (Burda, Grosse & Salakhutdinov 2016). ``posterior``: as in :func:`negative_elbo`.
    """
    mu, log_var = posterior if posterior is not None else model.encode(batch)
    mu, log_var = mu.float(), log_var.float()
    terms = []
    for e in eps:
        e = e.expand_as(mu)
        z = model.reparameterize(mu, log_var, e)
        log_px = -feature_nll(model, batch, z).sum(dim=1)
        log_pz = -0.5 * (z**2 + _LOG_2PI).sum(dim=1)
        log_qz = -0.5 * (e**2 + _LOG_2PI + log_var).sum(dim=1)
        terms.append(log_px + log_pz - log_qz)
    stacked = torch.stack(terms)
    return torch.logsumexp(stacked, dim=0) - math.log(len(terms))


def _init_tabular(model: nn.Module) -> None:
    """Fresh weights: PyTorch's default init of every linear layer, log-variances 0."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    nn.init.zeros_(model.num_log_var)  # type: ignore[arg-type]


TABULAR = ModelKind(
    loss=lambda model, rows, eps, beta, free_bits: negative_elbo(model, rows, eps, beta=beta, free_bits=free_bits),
    init=_init_tabular,
    latent_dim=lambda model: int(model.config.latent_dim),
)
"""The tabular VAE for :func:`vae.trainer.fit_members`: its masked -ELBO and its initialisation."""
