"""The ELBO terms against closed-form values."""

import math

import pytest
import torch

from vae.config import ModelConfig
from vae.elbo import (
    categorical_nll,
    gaussian_nll,
    iwae_log_likelihood,
    kl_free_bits,
    kl_standard_normal,
    negative_elbo,
)
from vae.model import MISSING, UNSEEN, TabularBatch, TabularVAE
from vae.score import fixed_eps


def _zero_model(n_numeric: int, cards: tuple[int, ...]) -> TabularVAE:
    """All weights and biases 0: q(z|x) = N(0, I), decoder means 0, logits 0, log-variances 0."""
    m = TabularVAE(ModelConfig(n_numeric=n_numeric, cat_cardinalities=cards, hidden=(8,), latent_dim=3))
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    return m


def test_gaussian_nll_matches_closed_form():
    x = torch.tensor([[1.0, -2.0]])
    mean = torch.tensor([[0.5, 0.0]])
    log_var = torch.tensor([0.0, math.log(4.0)])
    got = gaussian_nll(x, mean, log_var, torch.ones_like(x))
    want = [0.5 * (math.log(2 * math.pi) + 0.25), 0.5 * (math.log(2 * math.pi) + math.log(4.0) + 4.0 / 4.0)]
    assert got[0].tolist() == pytest.approx(want, rel=1e-6)


def test_gaussian_nll_leaves_out_missing_cells():
    got = gaussian_nll(torch.tensor([[3.0]]), torch.zeros(1, 1), torch.zeros(1), torch.zeros(1, 1))
    assert got.item() == 0.0


def test_kl_standard_normal_closed_form():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    log_var = torch.tensor([[0.0, 0.0], [math.log(2.0), 0.0]])
    # 1/2 (mu^2 + s^2 - 1 - log s^2): row 0 -> 0.5; row 1 -> 0.5 (2 - 1 - log 2)
    assert kl_standard_normal(mu, log_var).tolist() == pytest.approx([0.5, 0.5 * (1 - math.log(2.0))], rel=1e-6)


def test_free_bits_floor_each_dimension_of_the_kl():
    mu = torch.tensor([[2.0, 0.0, 0.0]])
    log_var = torch.zeros(1, 3)
    # per-dimension KL: 1/2 * 2^2 = 2, 0, 0; a floor of 0.5 nats lifts the two collapsed dimensions
    assert kl_free_bits(mu, log_var, 0.5).tolist() == pytest.approx([3.0])
    assert kl_free_bits(mu, log_var, 0.0).tolist() == pytest.approx(kl_standard_normal(mu, log_var).tolist())
    m = _zero_model(2, ())  # q(z|x) = N(0, I): KL 0 in each of 3 dimensions
    batch = TabularBatch(torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1, 0, dtype=torch.long))
    eps = fixed_eps(3, k=1)
    diff = negative_elbo(m, batch, eps, free_bits=0.25) - negative_elbo(m, batch, eps)
    assert diff.item() == pytest.approx(0.75)


def test_categorical_nll_missing_and_unseen():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]] * 3))
    codes = torch.tensor([0, MISSING, UNSEEN])
    got = categorical_nll(codes, logits).tolist()
    assert got == pytest.approx([-math.log(0.7), 0.0, -math.log(0.1)], rel=1e-5)


def test_negative_elbo_of_zero_model_is_closed_form():
    m = _zero_model(2, (4,))
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    batch = TabularBatch(x, torch.ones_like(x), torch.tensor([[1], [3]]))
    eps = fixed_eps(3, k=5)
    got = negative_elbo(m, batch, eps)
    # KL = 0 (mu = 0, log_var = 0); each numeric cell 0.5 (log 2 pi + x^2); the category -log(1/4).
    want = [0.5 * (2 * math.log(2 * math.pi) + (x[i] ** 2).sum().item()) + math.log(4.0) for i in range(2)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_beta_weights_only_the_kl_term():
    torch.manual_seed(0)
    m = TabularVAE(ModelConfig(n_numeric=3, hidden=(8,), latent_dim=2))
    x = torch.randn(5, 3)
    batch = TabularBatch(x, torch.ones_like(x), torch.zeros(5, 0, dtype=torch.long))
    eps = fixed_eps(2, k=1)
    mu, log_var = m.encode(batch)
    kl = kl_standard_normal(mu, log_var)
    diff = negative_elbo(m, batch, eps, beta=1.0) - negative_elbo(m, batch, eps, beta=0.0)
    assert torch.allclose(diff, kl, atol=1e-5)


def test_iwae_bound_is_at_least_the_mean_single_draw_bound():
    torch.manual_seed(0)
    m = TabularVAE(ModelConfig(n_numeric=3, cat_cardinalities=(2,), hidden=(8,), latent_dim=2))
    x = torch.randn(6, 3)
    batch = TabularBatch(x, torch.ones_like(x), torch.randint(0, 2, (6, 1)))
    eps = fixed_eps(2, k=8)
    iwae_k = iwae_log_likelihood(m, batch, eps)
    singles = torch.stack([iwae_log_likelihood(m, batch, e.unsqueeze(0)) for e in eps]).mean(0)
    assert torch.all(iwae_k >= singles - 1e-5)  # log-mean-exp >= mean-log (Jensen)


@pytest.mark.parametrize("likelihood", ["student_t", "laplace"])
def test_heavy_tailed_nll_matches_torch_distributions(likelihood):
    from torch.distributions import Laplace, StudentT

    from vae.elbo import numeric_nll

    x = torch.tensor([[0.3, -2.0, 7.0]])
    mean = torch.tensor([[0.1, 0.5, 0.0]])
    log_var = torch.tensor([0.4, -1.0, 0.0])
    got = numeric_nll(x, mean, log_var, torch.ones_like(x), likelihood, nu=4.0)
    scale = torch.exp(0.5 * log_var)
    dist = StudentT(4.0, mean, scale) if likelihood == "student_t" else Laplace(mean, scale)
    assert torch.allclose(got, -dist.log_prob(x), rtol=1e-5)
    assert numeric_nll(x, mean, log_var, torch.zeros_like(x), likelihood).abs().sum() == 0.0


def test_student_t_penalises_a_far_value_less_than_the_gaussian():
    from vae.elbo import numeric_nll

    x, zero, one = torch.tensor([[10.0]]), torch.zeros(1, 1), torch.ones(1, 1)
    assert numeric_nll(x, zero, torch.zeros(1), one, "student_t") < gaussian_nll(x, zero, torch.zeros(1), one)


def test_unknown_likelihood_is_rejected():
    with pytest.raises(ValueError, match="likelihood must be one of"):
        ModelConfig(n_numeric=1, likelihood="cauchy")
