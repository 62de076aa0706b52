"""Trainer determinism, early stopping, and score determinism."""

import pytest
import torch

from vae.config import ModelConfig, TrainConfig
from vae.elbo import TABULAR
from vae.fit_plan import TrainHistory
from vae.model import TabularBatch, TabularVAE
from vae.score import score_rows
from vae.trainer import fit_one


def fit(model: TabularVAE, train: TabularBatch, val: TabularBatch, cfg: TrainConfig) -> TrainHistory:
    """One table VAE trained alone by the ensemble trainer."""
    return fit_one(model, TABULAR, train, val, cfg.plan(len(train)), cfg.seed)


def _data(n: int, seed: int) -> TabularBatch:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=g)
    x = torch.cat([z, 2 * z, -z], 1) + 0.1 * torch.randn(n, 3, generator=g)
    return TabularBatch(x, torch.ones_like(x), (z > 0).long())


def _fit(seed: int = 0, epochs: int = 15):
    # on the CPU even where there is a GPU: these tests compare exact values with CPU tensors
    m = TabularVAE(ModelConfig.for_data(3, (2,)))
    h = fit(m, _data(400, 1), _data(100, 2), TrainConfig(max_epochs=epochs, seed=seed, patience=50, device="cpu"))
    return m, h


def test_training_is_seeded_and_reproducible():
    m1, h1 = _fit(seed=3)
    m2, h2 = _fit(seed=3)
    assert h1.train_loss == h2.train_loss
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)


def test_training_lowers_the_loss_and_keeps_the_best_epoch():
    _, h = _fit(epochs=40)
    assert len(h.train_loss) == len(h.val_loss) == 40
    assert h.val_loss[h.best_epoch] == min(h.val_loss)
    assert h.train_loss[-1] < h.train_loss[0] - 1.0


def test_early_stopping_stops_before_max_epochs():
    m = TabularVAE(ModelConfig.for_data(3, (2,)))
    h = fit(m, _data(200, 1), _data(50, 2), TrainConfig(max_epochs=1000, patience=3, lr=3e-2))
    assert h.stopped_early and len(h.train_loss) < 1000
    assert len(h.train_loss) == h.best_epoch + 1 + 3


def test_scores_are_deterministic_and_independent_of_batch_mates():
    m, _ = _fit()
    data = _data(50, 5)
    s_all = score_rows(m, data)
    assert torch.equal(s_all, score_rows(m, data))
    s_part = score_rows(m, data.rows(slice(10, 20)))
    assert torch.allclose(s_all[10:20], s_part, rtol=1e-5, atol=1e-5)


def test_outlying_rows_score_higher():
    m, _ = _fit(epochs=40)
    normal = _data(200, 7)
    far = TabularBatch(normal.x_num[:20] + torch.tensor([4.0, -4.0, 4.0]), normal.mask_num[:20], normal.x_cat[:20])
    assert score_rows(m, far).median() > score_rows(m, normal).quantile(0.99)


@pytest.mark.parametrize("method", ["elbo", "iwae", "recon"])
def test_every_score_method_is_finite(method):
    m, _ = _fit()
    assert torch.isfinite(score_rows(m, _data(20, 9), method=method)).all()


def test_unknown_score_method_is_named():
    m, _ = _fit(epochs=1)
    with pytest.raises(ValueError, match=r"score method must be one of .* got 'nope'"):
        score_rows(m, _data(5, 1), method="nope")


def test_model_config_sizes_follow_the_data():
    small, big = ModelConfig.for_data(4), ModelConfig.for_data(300)
    assert small.hidden == (32, 16) and small.latent_dim == 2
    assert big.hidden == (512, 256) and big.latent_dim == 32
    assert ModelConfig.for_data(4, hidden=(10,), latent_dim=7).hidden == (10,)


def test_bad_configs_name_the_value():
    with pytest.raises(ValueError, match="latent_dim must be >= 1, got 0"):
        ModelConfig(n_numeric=3, latent_dim=0)
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda', got 'tpu'"):
        TrainConfig(device="tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_and_scores_close_to_cpu():
    m = TabularVAE(ModelConfig.for_data(3, (2,)))
    h = fit(m, _data(400, 1), _data(100, 2), TrainConfig(max_epochs=10, device="cuda"))
    assert h.device.startswith("cuda")
    data = _data(100, 3)
    s_gpu = score_rows(m, data).cpu()
    s_cpu = score_rows(m.to("cpu"), data)
    assert torch.allclose(s_gpu, s_cpu, rtol=1e-3, atol=1e-3)


def test_automatic_epoch_budget_follows_the_step_budget():
    cfg = TrainConfig(max_epochs=None, patience=None, max_steps=20000)
    assert cfg.resolved_epochs(1000) == (1250, 125)  # batch 64 -> 16 steps per epoch
    assert cfg.resolved_epochs(10_000_000) == (20, 30)  # at least 20 epochs
    assert TrainConfig(max_epochs=7, patience=3).resolved_epochs(1000) == (7, 3)


def test_trimmed_validation_statistic_ignores_the_worst_rows_and_the_padding():
    from vae.elbo import negative_elbo
    from vae.stacked import trimmed_means
    from vae.trainer import fixed_eps

    m, _ = _fit(epochs=5)
    data = _data(100, 4)
    far = TabularBatch(torch.cat([data.x_num[:90], data.x_num[90:] + 50.0]), data.mask_num, data.x_cat)
    eps = fixed_eps(m.config.latent_dim, 4)
    with torch.no_grad():
        far_loss = negative_elbo(m, far, eps).unsqueeze(0)
        near = negative_elbo(m, data.rows(slice(0, 90)), eps).unsqueeze(0)
    count = torch.tensor([100])
    assert float(trimmed_means(far_loss, count, 0.1)) == pytest.approx(float(near.mean()), rel=1e-5)
    assert float(trimmed_means(far_loss, count, 0.0)) > float(trimmed_means(far_loss, count, 0.1)) + 10
    padded = torch.cat([near, torch.full((1, 10), 1e9)], dim=1)  # a member's padding is never counted
    assert float(trimmed_means(padded, torch.tensor([90]), 0.0)) == pytest.approx(float(near.mean()), rel=1e-6)
    assert torch.isnan(trimmed_means(torch.tensor([[1.0, float("nan")]]), torch.tensor([2]), 0.0)).all()


def test_min_epochs_keeps_training_past_an_early_plateau():
    m = TabularVAE(ModelConfig.for_data(3, (2,)))
    cfg = TrainConfig(max_epochs=1000, patience=3, lr=3e-2, min_epochs=40)
    h = fit(m, _data(200, 1), _data(50, 2), cfg)
    assert h.best_epoch >= 39 and len(h.train_loss) >= 43


def test_cosine_schedule_and_kl_warmup_are_seeded_and_finish():
    cfg = TrainConfig(max_epochs=12, patience=100, lr_schedule="cosine", kl_warmup_epochs=5, seed=1)
    runs = []
    for _ in range(2):
        m = TabularVAE(ModelConfig.for_data(3, (2,)))
        runs.append(fit(m, _data(400, 1), _data(100, 2), cfg).train_loss)
    assert runs[0] == runs[1] and len(runs[0]) == 12


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr_schedule": "step"}, "lr_schedule must be"),
        ({"min_epochs": -1}, "min_epochs and kl_warmup_epochs must be >= 0"),
    ],
)
def test_bad_schedule_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("method", ["elbo", "iwae", "recon"])
def test_one_score_pass_gives_exactly_what_the_separate_calls_give(method):
    from vae.elbo import iwae_log_likelihood, negative_elbo
    from vae.score import feature_contributions, fixed_eps, posterior_means, score_pass

    m, _ = _fit(epochs=3)
    data = _data(64, 9)
    one = score_pass(m, data, method, k=8, explain=True)
    eps = fixed_eps(m.config.latent_dim, 8)
    with torch.no_grad():  # the definitions, each encoding the batch itself
        want = {
            "elbo": lambda: negative_elbo(m, data, eps),
            "iwae": lambda: -iwae_log_likelihood(m, data, eps),
            "recon": lambda: torch.from_numpy(feature_contributions(m, data)[0]).sum(dim=1),
        }[method]()
    assert torch.equal(one.score, want)
    assert torch.equal(one.mu.double(), torch.from_numpy(posterior_means(m, data)))
    assert torch.equal(one.nll, torch.from_numpy(feature_contributions(m, data)[0]))
    assert one.nll.is_contiguous()  # row sums add up in the same order as for a torch.cat of the parts
    assert score_pass(m, data, method, k=8).nll is None
    with pytest.raises(ValueError, match="score method must be one of"):
        score_pass(m, data, "mse")


def test_conditional_nll_hides_each_group_from_the_encoder():
    from vae.elbo import feature_nll
    from vae.model import MISSING
    from vae.score import conditional_nll

    m, _ = _fit(epochs=3)
    data = _data(20, 5)  # 3 numeric features and 1 categorical: 4 features
    with torch.no_grad():
        want = torch.zeros(20, dtype=torch.float64)
        for j in range(4):  # 8 groups on 4 features: each feature alone
            mask, codes = data.mask_num.clone(), data.x_cat.clone()
            if j < 3:
                mask[:, j] = 0.0
            else:
                codes[:, 0] = MISSING
            mu, _ = m.encode(TabularBatch(data.x_num, mask, codes))
            want += feature_nll(m, data, mu)[:, j].double()
    assert torch.allclose(conditional_nll(m, data, 8), want)
    # one group = every feature hidden at once: each scored at the code of an empty row
    with torch.no_grad():
        empty = TabularBatch(data.x_num, torch.zeros_like(data.mask_num), torch.full_like(data.x_cat, MISSING))
        assert torch.allclose(conditional_nll(m, data, 1), feature_nll(m, data, m.encode(empty)[0]).sum(1).double())
    # a missing cell adds nothing
    gap = TabularBatch(data.x_num, torch.cat([torch.zeros(20, 1), data.mask_num[:, 1:]], 1), data.x_cat)
    assert (conditional_nll(m, gap, 8) < conditional_nll(m, data, 8)).all()
    with pytest.raises(ValueError, match="groups must be >= 1, got 0"):
        conditional_nll(m, data, 0)
