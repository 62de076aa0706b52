"""A convolutional VAE for images with pixels in [0, 1] (Kingma & Welling, 2014).

Encoder q(z | x) = N(mu(x), diag(exp(log_var(x)))): two stride-2 convolutions (4x4 kernels) and a
fully connected layer; prior p(z) = N(0, I); decoder: a fully connected layer and two stride-2
transposed convolutions back to the image, then a per-pixel likelihood p(x | z):

- ``bernoulli``: log p(x | z) = sum_i x_i log l_i + (1 - x_i) log(1 - l_i), l = sigmoid(logits); the classic
  choice for [0, 1] pixels (not a normalised density for grey values, but a proper cross-entropy);
- ``cbernoulli``: the continuous Bernoulli (Loaiza-Ganem & Cunningham, NeurIPS 2019), the Bernoulli plus
  its normalising constant log C(l), C(l) = 2 atanh(1 - 2l) / (1 - 2l) (C(1/2) = 2): a proper density on [0, 1];
- ``gaussian``: N(x_i; sigmoid(out_i), exp(s_i)), with a learned log-variance s_i per pixel and channel
  (homoscedastic in z, floored at ``min_log_var``): pixels that vary little in normal images (background,
  the outline of the class) weigh more in the score than pixels that vary a lot.

Images of any height and width are zero-padded to multiples of 4 before the encoder, and the decoder's
output is cropped back, so the same network shape serves 8x8 digits and 28x28 Fashion-MNIST.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vae.config import Serialisable
from vae.fit_plan import ModelKind
from vae.trainer import fixed_eps

IMAGE_LIKELIHOODS = ("bernoulli", "cbernoulli", "gaussian")
IMAGE_SCORE_METHODS = ("recon", "elbo", "iwae")
_LOG_2PI = math.log(2.0 * math.pi)
# Start of the Gaussian log-variance: a pixel standard deviation of 0.135. Started at 0 (sd 1), Adam's steps of
# about lr = 1e-3 could move it by at most ~0.6 in 20 epochs of Fashion-MNIST, so the variance stayed near 1 and
# weighed the reconstruction term down against the KL term (Rybkin et al. 2021 on calibrated decoders); the
# AUROC of class 0 rose from 0.881 to 0.909 with this start and the faster rate (BENCHMARKS.md, Images).
INIT_LOG_VAR = -4.0
VAR_LR_FACTOR = 10.0  # the log-variances learn 10x faster than the network's weights


@dataclass(frozen=True)
class ConvVAEConfig(Serialisable):
    """Shape of a :class:`ConvVAE`.

    Attributes:
        channels: image channels (1 grey, 3 RGB).
        height, width: image size in pixels (>= 4 each).
        latent_dim: size of the latent code z.
        conv_channels: output channels of the two stride-2 convolutions.
        hidden: width of the fully connected layer between the convolutions and z.
        likelihood: ``bernoulli``, ``cbernoulli`` or ``gaussian`` (see the module docstring).
        min_log_var: floor of the Gaussian likelihood's learned log-variance.
    """

    channels: int
    height: int
    width: int
    latent_dim: int = 16
    conv_channels: tuple[int, int] = (16, 32)
    hidden: int = 256
    likelihood: str = "bernoulli"
    min_log_var: float = -7.0

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        if self.height < 4 or self.width < 4:
            raise ValueError(f"image size must be at least 4x4, got {self.height}x{self.width}")
        if self.latent_dim < 1 or self.hidden < 1 or len(self.conv_channels) != 2 or min(self.conv_channels) < 1:
            raise ValueError(
                f"latent_dim, hidden and the 2 conv_channels must be >= 1, got {self.latent_dim!r}, "
                f"{self.hidden!r}, {self.conv_channels!r}"
            )
        if self.likelihood not in IMAGE_LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {IMAGE_LIKELIHOODS}, got {self.likelihood!r}")

    @property
    def padded(self) -> tuple[int, int]:
        """(height, width) rounded up to multiples of 4."""
        return 4 * math.ceil(self.height / 4), 4 * math.ceil(self.width / 4)

    @property
    def feature_grid(self) -> tuple[int, int, int]:
        """(channels, height, width) of the encoder's last convolutional feature map."""
        hp, wp = self.padded
        return self.conv_channels[1], hp // 4, wp // 4

    @property
    def feature_dim(self) -> int:
        """Values in that feature map (the length of :meth:`ConvVAE.conv_features`' rows)."""
        return math.prod(self.feature_grid)


class ConvVAE(nn.Module):
    """Conv encoder to (mu, log_var), reparameterisation, transposed-conv decoder; knows nothing of training."""

    def __init__(self, config: ConvVAEConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.conv_channels
        self._grid = config.feature_grid
        flat = config.feature_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(config.channels, c1, 4, 2, 1),
            nn.SiLU(),
            nn.Conv2d(c1, c2, 4, 2, 1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(flat, config.hidden),
            nn.SiLU(),
        )
        self.to_mu = nn.Linear(config.hidden, config.latent_dim)
        self.to_log_var = nn.Linear(config.hidden, config.latent_dim)
        self.decoder_fc = nn.Sequential(
            nn.Linear(config.latent_dim, config.hidden), nn.SiLU(), nn.Linear(config.hidden, flat), nn.SiLU()
        )
        self.decoder_conv = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, 2, 1),
            nn.SiLU(),
            nn.ConvTranspose2d(c1, config.channels, 4, 2, 1),
        )
        # Gaussian likelihood only: one learned log-variance per pixel and channel (homoscedastic in z).
        self.pixel_log_var = nn.Parameter(torch.full((config.channels, config.height, config.width), INIT_LOG_VAR))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (n, C, H, W) in [0, 1] -> mu, log_var of q(z | x), each (n, latent_dim)."""
        hp, wp = self.config.padded
        x = F.pad(x, (0, wp - x.shape[-1], 0, hp - x.shape[-2]))
        h = self.encoder(x)
        # The clamp keeps exp(log_var) finite on images far from the training data.
        return self.to_mu(h), self.to_log_var(h).clamp(-12.0, 8.0)

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, C, H, W) in [0, 1] -> (n, c2 * Hp/4 * Wp/4) the encoder's last convolutional feature map
        (after its activation), flattened: what the encoder sees of the image before the dense layers."""
        hp, wp = self.config.padded
        x = F.pad(x, (0, wp - x.shape[-1], 0, hp - x.shape[-2]))
        return self.encoder[:4](x).flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (n, latent_dim) -> the decoder's output (n, C, H, W): logits, or pre-sigmoid means (Gaussian)."""
        h = self.decoder_fc(z).view(-1, *self._grid)
        return self.decoder_conv(h)[..., : self.config.height, : self.config.width]

    def mean_image(self, out: torch.Tensor) -> torch.Tensor:
        """The decoded image (n, C, H, W) in [0, 1]: the likelihood's mean (for the continuous Bernoulli, its
        parameter l, whose mode is sharper than its mean and looks like the usual reconstruction)."""
        return torch.sigmoid(out.float())

    def log_var(self) -> torch.Tensor:
        """(C, H, W) the floored Gaussian log-variance of each pixel."""
        return self.pixel_log_var.clamp(min=self.config.min_log_var)

    @staticmethod
    def reparameterize(mu: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) supplied by the caller (so scoring can fix it)."""
        return mu + torch.exp(0.5 * log_var) * eps


def _cb_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(l) of the continuous Bernoulli, l = sigmoid(logits), stable near l = 1/2.

    C(l) = 2 atanh(1 - 2l) / (1 - 2l); with 1 - 2l = -tanh(logits / 2) this is
    log C = log(2 atanh(t) / t), t = |tanh(logits / 2)|, and log 2 + t^2 / 3 (Taylor) for small t.
    """
    t = torch.tanh(logits.abs() / 2).clamp(max=1 - 1e-6)
    small = t < 1e-2
    safe = torch.where(small, torch.full_like(t, 0.5), t)
    exact = torch.log(2 * torch.atanh(safe) / safe)
    return torch.where(small, math.log(2.0) + t**2 / 3, exact)


def pixel_nll(model: ConvVAE, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) per-pixel negative log-likelihood -log p(x_i | z) of x under the decoder output ``out``."""
    out = out.float()
    lik = model.config.likelihood
    if lik == "gaussian":
        s = model.log_var().unsqueeze(0)
        return 0.5 * (_LOG_2PI + s + (x - torch.sigmoid(out)) ** 2 * torch.exp(-s))
    bce = F.binary_cross_entropy_with_logits(out, x, reduction="none")
    return bce - _cb_log_norm(out) if lik == "cbernoulli" else bce


def kl_standard_normal(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """(n,) KL(N(mu, diag(exp(log_var))) || N(0, I)) = 1/2 sum_k (mu_k^2 + sigma_k^2 - 1 - log sigma_k^2)
    (Kingma & Welling 2014, Appendix B)."""
    mu, log_var = mu.float(), log_var.float()
    return 0.5 * torch.sum(mu**2 + torch.exp(log_var) - 1.0 - log_var, dim=1)


def negative_elbo(model: ConvVAE, x: torch.Tensor, eps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """(n,) -ELBO per image in nats: Monte Carlo over k draws eps (k, n or 1, latent_dim), KL in closed form."""
    mu, log_var = model.encode(x)
    kl = kl_standard_normal(mu, log_var)
    recon = torch.stack(
        [pixel_nll(model, x, model.decode(model.reparameterize(mu, log_var, e))).sum(dim=(1, 2, 3)) for e in eps]
    ).mean(dim=0)
    return recon + beta * kl


@torch.no_grad()
def score_images(model: ConvVAE, x: torch.Tensor, method: str = "recon", k: int = 16) -> torch.Tensor:
    """(n,) deterministic anomaly score of each image (higher = more anomalous), in nats.

    Methods:
        ``recon``: reconstruction negative log-likelihood at the posterior mean, -log p(x | z = mu(x));
        ``elbo``: negative ELBO with k fixed draws shared by every image;
        ``iwae``: negative importance-weighted log-likelihood with k fixed draws (Burda et al. 2016).
    """
    model.eval()
    device = next(model.parameters()).device
    x = x.to(device)
    if method == "recon":
        mu, _ = model.encode(x)
        return pixel_nll(model, x, model.decode(mu)).sum(dim=(1, 2, 3))
    eps = fixed_eps(model.config.latent_dim, k, device)
    if method == "elbo":
        return negative_elbo(model, x, eps)
    if method == "iwae":
        mu, log_var = model.encode(x)
        mu, log_var = mu.float(), log_var.float()
        terms = []
        for e in eps:
            e = e.expand_as(mu)
            z = model.reparameterize(mu, log_var, e)
            log_px = -pixel_nll(model, x, model.decode(z)).sum(dim=(1, 2, 3))
            log_pz = -0.5 * (z**2 + _LOG_2PI).sum(dim=1)
            log_qz = -0.5 * (e**2 + _LOG_2PI + log_var).sum(dim=1)
            terms.append(log_px + log_pz - log_qz)
        return -(torch.logsumexp(torch.stack(terms), dim=0) - math.log(len(terms)))
    raise ValueError(f"score method must be one of {IMAGE_SCORE_METHODS}, got {method!r}")


@torch.no_grad()
def reconstruct(model: ConvVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstructions at the posterior mean (n, C, H, W) in [0, 1] and per-pixel error maps (n, H, W):
    -log p(x_i | z = mu(x)) minus its value for a perfect reconstruction, in nats, summed over channels."""
    model.eval()
    device = next(model.parameters()).device
    x = x.to(device)
    mu, _ = model.encode(x)
    out = model.decode(mu)
    # The error map is the excess over a perfect reconstruction (decoder output logit(x)), so a pixel's
    # colour says how badly it is explained, without the likelihood's constant (Gaussian) or entropy terms.
    perfect = torch.logit(x.float().clamp(1e-4, 1 - 1e-4))
    excess = (pixel_nll(model, x, out) - pixel_nll(model, x, perfect)).clamp(min=0.0)
    return model.mean_image(out), excess.sum(dim=1)


def _init_conv(model: nn.Module) -> None:
    """Fresh weights: PyTorch's default init of every layer, pixel log-variances at ``INIT_LOG_VAR``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            m.reset_parameters()
    nn.init.constant_(model.pixel_log_var, INIT_LOG_VAR)  # type: ignore[arg-type]


CONV = ModelKind(
    loss=lambda model, x, eps, beta, free_bits: negative_elbo(model, x, eps, beta=beta),
    init=_init_conv,
    latent_dim=lambda model: int(model.config.latent_dim),
    lr_factors={"pixel_log_var": VAR_LR_FACTOR},
)
"""The conv VAE for :func:`vae.trainer.fit_members`: its -ELBO, its initialisation, faster log-variances."""
