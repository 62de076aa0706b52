"""The convolutional VAE: shapes, closed-form terms, determinism of training and scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from vae.config import ImageTrainConfig
from vae.conv import (
    CONV,
    ConvVAE,
    ConvVAEConfig,
    _cb_log_norm,
    fixed_eps,
    kl_standard_normal,
    negative_elbo,
    pixel_nll,
    reconstruct,
    score_images,
)
from vae.trainer import fit_one


def _x(n: int = 6, c: int = 1, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8), (1, 30, 30), (1, 28, 28), (3, 5, 7)])
@pytest.mark.parametrize("likelihood", ["bernoulli", "cbernoulli", "gaussian"])
def test_elbo_and_output_shapes(shape, likelihood):
    c, h, w = shape
    model = ConvVAE(ConvVAEConfig(c, h, w, latent_dim=3, conv_channels=(4, 8), hidden=16, likelihood=likelihood))
    x = _x(5, c, h, w)
    mu, log_var = model.encode(x)
    assert mu.shape == log_var.shape == (5, 3)
    out = model.decode(mu)
    assert out.shape == (5, c, h, w)
    assert pixel_nll(model, x, out).shape == (5, c, h, w)
    assert negative_elbo(model, x, fixed_eps(3, 4)).shape == (5,)
    for method in ("recon", "elbo", "iwae"):
        s = score_images(model, x, method, k=4)
        assert s.shape == (5,) and torch.isfinite(s).all()
    recon, err = reconstruct(model, x)
    assert recon.shape == (5, c, h, w) and err.shape == (5, h, w) and (err >= 0).all()


def test_kl_and_likelihood_terms_in_closed_form():
    assert kl_standard_normal(torch.zeros(2, 4), torch.zeros(2, 4)).tolist() == [0.0, 0.0]
    # KL(N(1, e^1) || N(0, 1)) per dimension = 1/2 (1 + e - 1 - 1)
    assert kl_standard_normal(torch.ones(1, 1), torch.ones(1, 1)).item() == pytest.approx(0.5 * (math.e - 1))
    # continuous Bernoulli: C(1/2) = 2; C(l) = 2 atanh(1 - 2l) / (1 - 2l)
    lam = 0.8
    logit = torch.tensor([0.0, math.log(lam / (1 - lam)), 1e-4])
    expected = [math.log(2.0), math.log(2 * math.atanh(1 - 2 * lam) / (1 - 2 * lam)), math.log(2.0)]
    assert _cb_log_norm(logit).tolist() == pytest.approx(expected, rel=1e-5)
    model = ConvVAE(ConvVAEConfig(1, 4, 4, likelihood="gaussian"))
    x, out = torch.full((1, 1, 4, 4), 0.25), torch.zeros((1, 1, 4, 4))  # mean sigmoid(0) = 0.5
    with torch.no_grad():
        model.pixel_log_var[0, 1, 2] = 1.0
        model.pixel_log_var[0, 0, 0] = -100.0  # floored at min_log_var = -7
    nll = pixel_nll(model, x, out)[0, 0]
    assert nll[1, 2].item() == pytest.approx(0.5 * (math.log(2 * math.pi) + 1.0 + 0.0625 / math.e))
    assert nll[0, 0].item() == pytest.approx(0.5 * (math.log(2 * math.pi) - 7.0 + 0.0625 * math.exp(7.0)), rel=1e-5)
    bern = ConvVAE(ConvVAEConfig(1, 4, 4, likelihood="bernoulli"))
    assert torch.allclose(pixel_nll(bern, x, out), F.binary_cross_entropy_with_logits(out, x, reduction="none"))


def test_score_is_deterministic_and_independent_of_the_batch():
    torch.manual_seed(0)
    model = ConvVAE(ConvVAEConfig(1, 8, 8, latent_dim=4, conv_channels=(4, 8), hidden=16))
    x = _x(10)
    for method in ("recon", "elbo", "iwae"):
        a, b = score_images(model, x, method), score_images(model, x, method)
        assert torch.equal(a, b)
        assert torch.allclose(score_images(model, x[3:5], method), a[3:5], rtol=1e-5, atol=1e-4)


def test_same_seed_trains_the_same_model_and_early_stopping_restores_the_best():
    cfg = ImageTrainConfig(max_epochs=3, batch_size=8, seed=3, device="cpu", min_epochs=1, patience=1)
    shape = ConvVAEConfig(1, 8, 8, latent_dim=2, conv_channels=(4, 8), hidden=16)
    x = _x(40)
    m1, m2 = ConvVAE(shape), ConvVAE(shape)
    h1 = fit_one(m1, CONV, x[:32], x[32:], cfg.plan(32), cfg.seed)
    fit_one(m2, CONV, x[:32], x[32:], cfg.plan(32), cfg.seed)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    assert len(h1.train_loss) == len(h1.val_loss) <= 3 and h1.best_val_loss == min(h1.val_loss)
    assert h1.batch_size == 8 and torch.get_num_threads() >= 1


def test_configs_reject_bad_values():
    with pytest.raises(ValueError, match="likelihood must be one of"):
        ConvVAEConfig(1, 8, 8, likelihood="poisson")
    with pytest.raises(ValueError, match="channels must be 1 \\(grey\\) or 3 \\(RGB\\), got 2"):
        ConvVAEConfig(2, 8, 8)
    with pytest.raises(ValueError, match="at least 4x4, got 3x8"):
        ConvVAEConfig(1, 3, 8)
    with pytest.raises(ValueError, match="device must be"):
        ImageTrainConfig(device="tpu")
    with pytest.raises(ValueError, match="score method must be one of"):
        score_images(ConvVAE(ConvVAEConfig(1, 4, 4)), _x(1, h=4, w=4), "mse")
    assert ImageTrainConfig().resolved_batch_size(100) == 16 and ImageTrainConfig().resolved_batch_size(10**5) == 128
    assert np.isclose(ConvVAEConfig(1, 30, 30).padded, (32, 32)).all()
