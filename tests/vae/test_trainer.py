"""The one ensemble trainer: members trained together equal members trained alone, each stops on its own
and keeps its best weights, bad arguments."""

import pytest
import torch

from vae.config import ModelConfig, TrainConfig
from vae.elbo import TABULAR, negative_elbo
from vae.model import TabularBatch, TabularVAE
from vae.trainer import fit_members, fixed_eps

CONFIG = ModelConfig.for_data(3, (2,))


def _pool(n: int = 600) -> TabularBatch:
    g = torch.Generator().manual_seed(7)
    z = torch.randn(n, 1, generator=g)
    x = torch.cat([z, 2 * z, -z], 1) + 0.1 * torch.randn(n, 3, generator=g)
    return TabularBatch(x, torch.ones_like(x), (z > 0).long())


def _rows(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Member i's training and validation rows: its own block of 100 rows validates, the rest trains."""
    val = torch.arange(100 * i, 100 * (i + 1))
    return torch.cat([torch.arange(0, 100 * i), torch.arange(100 * (i + 1), 600)]), val


def _fit(members: list[int], cfg: TrainConfig):
    models = [TabularVAE(CONFIG) for _ in members]
    rows = [_rows(i) for i in members]
    plan = cfg.plan(500)
    hists = fit_members(
        models, TABULAR, _pool(), [t for t, _ in rows], [v for _, v in rows], plan, [10 + i for i in members]
    )
    return models, hists


def test_members_trained_together_match_each_trained_alone():
    cfg = TrainConfig(max_epochs=4, batch_size=64, min_epochs=0, patience=100, device="cpu")
    together, hists = _fit([0, 1, 2], cfg)
    for i in range(3):
        [alone], [h] = _fit([i], cfg)
        assert h.train_loss == pytest.approx(hists[i].train_loss, rel=1e-4)
        for a, b in zip(alone.parameters(), together[i].parameters(), strict=True):
            assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(together[0].to_mu.weight, together[1].to_mu.weight)  # own seed, own rows


def test_each_member_stops_on_its_own_and_ends_with_its_best_weights():
    cfg = TrainConfig(max_epochs=300, batch_size=64, min_epochs=0, patience=3, lr=3e-2, device="cpu")
    models, hists = _fit([0, 1, 2, 3], cfg)
    assert all(h.stopped_early and len(h.train_loss) == h.best_epoch + 1 + 3 for h in hists)
    assert len({len(h.train_loss) for h in hists}) > 1  # they stopped at different epochs
    eps = fixed_eps(CONFIG.latent_dim, 4)
    for i, (m, h) in enumerate(zip(models, hists, strict=True)):
        with torch.no_grad():  # the weights kept are those of the member's best validation loss
            val_loss = float(negative_elbo(m, _pool().rows(_rows(i)[1]), eps).mean())
        assert val_loss == pytest.approx(h.best_val_loss, rel=1e-5)
        assert h.val_loss[h.best_epoch] == min(h.val_loss)


def test_bad_arguments_are_named():
    plan = TrainConfig(max_epochs=1).plan(10)
    model, rows = TabularVAE(CONFIG), torch.arange(10)
    with pytest.raises(ValueError, match="as many models, row sets and seeds"):
        fit_members([model], TABULAR, _pool(), [rows, rows], [rows], plan, [0])
    with pytest.raises(ValueError, match="training and validation rows for every member, got an empty set"):
        fit_members([model], TABULAR, _pool(), [rows], [rows[:0]], plan, [0])


def test_an_epoch_check_sees_the_current_weights_and_can_end_the_fit():
    cfg = TrainConfig(max_epochs=20, batch_size=64, min_epochs=0, patience=100, device="cpu")
    seen: list[torch.Tensor] = []

    def stop(ms):
        seen.append(ms[0].to_mu.weight.detach().clone())
        return True

    models = [TabularVAE(CONFIG) for _ in range(2)]
    rows = [_rows(i) for i in range(2)]
    args = (models, TABULAR, _pool(), [t for t, _ in rows], [v for _, v in rows], cfg.plan(500), [10, 11])
    hists = fit_members(*args, check=(5, stop))
    assert len(seen) == 1 and all(h.stopped_by_check and len(h.val_loss) == 5 for h in hists)
    # the fit ends with each member's best weights of those 5 epochs; without a verdict it goes on
    again = [TabularVAE(CONFIG) for _ in range(2)]
    full = fit_members(again, *args[1:], check=(5, lambda ms: False))
    assert not any(h.stopped_by_check for h in full) and len(full[0].val_loss) == 20
    assert full[0].val_loss[:5] == pytest.approx(hists[0].val_loss)
