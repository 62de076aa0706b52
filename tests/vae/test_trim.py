"""Training on contaminated data: the trimmed ELBO leaves the worst-fitting rows out of the gradient."""

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


def _contaminated(n: int, n_bad: int, seed: int) -> tuple[TabularBatch, TabularBatch]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=g)
    x = torch.cat([z, 2 * z, -z], 1) + 0.1 * torch.randn(n, 3, generator=g)
    bad = torch.randn(n_bad, 3, generator=g) * 0.3 + torch.tensor([3.0, -6.0, 3.0])  # off the normal manifold
    rows = torch.cat([x, bad])
    batch = TabularBatch(rows, torch.ones_like(rows), torch.zeros(len(rows), 0, dtype=torch.long))
    return batch, TabularBatch(bad, torch.ones_like(bad), torch.zeros(n_bad, 0, dtype=torch.long))


def test_trimming_keeps_injected_anomalies_unlearned():
    train, bad = _contaminated(760, 40, seed=0)
    val, _ = _contaminated(200, 0, seed=1)
    scores = {}
    for trim in (0.0, 0.1):
        m = TabularVAE(ModelConfig.for_data(3))
        fit(m, train, val, TrainConfig(max_epochs=60, seed=0, trim_fraction=trim))
        normal = score_rows(m, val)
        scores[trim] = (score_rows(m, bad).median() - normal.median()).item()
    assert scores[0.1] > scores[0.0] + 1.0  # the anomalies stand out more when they were trimmed


def test_trim_fraction_is_validated():
    with pytest.raises(ValueError, match=r"trim_fraction must be in \[0, 0.5\), got 0.6"):
        TrainConfig(trim_fraction=0.6)
