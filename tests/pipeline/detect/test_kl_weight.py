"""The KL weight chosen by latent collapse (``kl_weights``) and the active-unit statistic behind it."""

import numpy as np
import pytest
import torch

import pipeline.detect.detector_fit as fit_module
from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.errors import InputError
from tests.conftest import make_table
from vae.config import ModelConfig, TrainConfig
from vae.model import TabularBatch, TabularVAE
from vae.score import latent_variances, posterior_means


def _batch(n: int = 200) -> TabularBatch:
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    return TabularBatch(x, torch.ones_like(x), torch.zeros((n, 0), dtype=torch.long))


def test_latent_variances_are_the_variance_of_the_posterior_means_and_zero_on_a_dead_dimension():
    torch.manual_seed(0)
    m = TabularVAE(ModelConfig.for_data(3))
    with torch.no_grad():  # dimension 1's mean no longer depends on x: a collapsed unit
        m.to_mu.weight[1].zero_()
    b = _batch()
    v = latent_variances(m, b)
    assert v.shape == (m.config.latent_dim,)
    assert np.allclose(v, posterior_means(m, b).var(axis=0))
    assert v[1] == 0.0 and (np.delete(v, 1) > 0).all()


def _fit_recording(monkeypatch, threshold: float, **kw) -> tuple[VAEAnomalyDetector, list[float]]:
    """A small detector fitted with ACTIVE_UNIT_VARIANCE set to ``threshold``; also the KL weight of every VAE fit."""
    betas: list[float] = []
    real_fit = fit_module.fit_members

    def recording_fit(models, kind, pool, train, val, plan, seeds, check=None):
        betas.extend([plan.beta] * len(models))
        return real_fit(models, kind, pool, train, val, plan, seeds, check)

    monkeypatch.setattr(fit_module, "fit_members", recording_fit)
    monkeypatch.setattr(fit_module, "ACTIVE_UNIT_VARIANCE", threshold)
    df, _ = make_table(300, seed=12)
    args = {"alpha": 0.1, "id_columns": ["id"], "n_models": 3, "train_config": TrainConfig(max_epochs=3), **kw}
    return VAEAnomalyDetector(**args).fit(df), betas


def test_a_collapsed_dimension_moves_the_ensemble_to_the_next_kl_weight(monkeypatch):
    # every dimension counts as collapsed: the ensemble is fitted again at beta = 0.2, in a second batched fit
    det, betas = _fit_recording(monkeypatch, np.inf)
    assert betas == [1.0, 1.0, 1.0, 0.2, 0.2, 0.2]
    assert det.kl_weight_ == 0.2 and det.active_units_ == [0, 0, 0]
    same, betas = _fit_recording(monkeypatch, np.inf, kl_weights=(0.2,))  # the same ensemble, fitted alone
    assert betas == [0.2] * 3
    df, _ = make_table(100, seed=13)
    assert np.array_equal(det.score_samples(df), same.score_samples(df))


def test_an_ensemble_without_collapse_keeps_the_first_kl_weight(monkeypatch):
    det, betas = _fit_recording(monkeypatch, -1.0)
    assert betas == [1.0, 1.0, 1.0]
    assert det.kl_weight_ == 1.0 and det.active_units_ == [det.model_config_.latent_dim] * 3


def test_without_kl_weights_the_trainer_beta_is_used(monkeypatch):
    det, betas = _fit_recording(monkeypatch, np.inf, kl_weights=None, train_config=TrainConfig(max_epochs=3, beta=0.5))
    assert betas == [0.5] * 3 and det.kl_weight_ == 0.5


def test_the_kl_weight_used_is_saved(monkeypatch, tmp_path):
    det, _ = _fit_recording(monkeypatch, np.inf)
    loaded = VAEAnomalyDetector.load(det.save(tmp_path / "m"))
    assert loaded.kl_weights == (1.0, 0.2) and loaded.kl_weight_ == 0.2 and loaded.active_units_ == [0, 0, 0]
    df, _ = make_table(50, seed=14)
    assert np.array_equal(loaded.score_samples(df), det.score_samples(df))


@pytest.mark.parametrize("bad", [(), (-1.0,), (1.0, float("nan")), ("1",)])
def test_bad_kl_weights_are_refused(bad):
    df, _ = make_table(100, seed=15)
    with pytest.raises(InputError, match=r"kl_weights must be None or a non-empty sequence of finite weights >= 0"):
        VAEAnomalyDetector(alpha=0.1, id_columns=["id"], kl_weights=bad).fit(df)


def test_a_collapse_seen_after_the_warm_up_ends_the_first_fit_early(monkeypatch):
    # checked 10 epochs after the warm-up: the beta = 1 fit stops there and the ensemble is the beta = 0.2 one
    tc = TrainConfig(max_epochs=14, kl_warmup_epochs=2, min_epochs=0)
    det, betas = _fit_recording(monkeypatch, np.inf, train_config=tc)
    assert betas == [1.0] * 3 + [0.2] * 3 and det.kl_weight_ == 0.2
    assert all(len(h.val_loss) == 14 and not h.stopped_by_check for h in det.histories_)
    stopped: list[int] = []
    real_fit = fit_module.fit_members

    def recording_fit(models, kind, pool, train, val, plan, seeds, check=None):
        hists = real_fit(models, kind, pool, train, val, plan, seeds, check)
        stopped.append(len(hists[0].val_loss) if hists[0].stopped_by_check else -1)
        return hists

    monkeypatch.setattr(fit_module, "fit_members", recording_fit)
    df, _ = make_table(300, seed=12)
    VAEAnomalyDetector(alpha=0.1, id_columns=["id"], n_models=3, train_config=tc).fit(df)
    assert stopped == [12, -1]  # the beta = 1 fit ended at epoch 2 + 10; the last weight is never checked
