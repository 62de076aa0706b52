"""A seeded trainer with early stopping on the validation ELBO.

It trains any :class:`TabularVAE` on pre-made tensors: each step slices a shuffled index
tensor, so there is no per-sample Python work and no DataLoader.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import torch

from vae.config import TrainConfig
from vae.elbo import negative_elbo
from vae.model import TabularBatch, TabularVAE
from vae.score import fixed_eps

log = logging.getLogger(__name__)


@dataclass
class TrainHistory:
    """What happened during :func:`fit`; losses are mean -ELBO per row (nats)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = float("inf")
    stopped_early: bool = False
    seconds: float = 0.0
    device: str = "cpu"
    batch_size: int = 0
    samples_per_s: float = 0.0


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(device)


def _optimizer(model: TabularVAE, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    try:  # the fused kernel cuts per-step overhead on both CPU and CUDA
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-step lr schedule: cosine decay lr_t = lr * (1 + cos(pi * t / T)) / 2, or None (constant)."""
    if cfg.lr_schedule != "cosine":
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t / max(total_steps, 1), 1.0)))
    )


@torch.no_grad()
def evaluate(model: TabularVAE, batch: TabularBatch, eps: torch.Tensor, trim: float = 0.0, chunk: int = 65536) -> float:
    """Mean -ELBO of the rows in batch with the fixed draws eps (deterministic).

    With ``trim`` > 0 the highest ``trim`` fraction of per-row losses is left out: a few
    heavy-tailed validation rows then cannot stop training while the bulk still improves.
    """
    model.eval()
    losses = torch.cat(
        [negative_elbo(model, batch.rows(slice(s, s + chunk)), eps).float() for s in range(0, len(batch), chunk)]
    )
    if trim > 0:
        keep = max(int(len(losses) * (1.0 - trim)), 1)
        losses = torch.topk(losses, keep, largest=False).values
    return float(losses.mean())


def fit(model: TabularVAE, train: TabularBatch, val: TabularBatch, cfg: TrainConfig) -> TrainHistory:
    """Train ``model`` in place; see :func:`_fit`. Sets the CPU thread count for the duration."""
    device = resolve_device(cfg.device)
    previous = torch.get_num_threads()
    if device.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _fit(model, train, val, cfg, device)
    finally:
        torch.set_num_threads(previous)


def _fit(
    model: TabularVAE, train: TabularBatch, val: TabularBatch, cfg: TrainConfig, device: torch.device
) -> TrainHistory:
    """Train ``model`` in place on ``train``, early-stopping on ``val``; restores the best weights.

    Args:
        model: the network to train (parameters are re-initialised from ``cfg.seed``).
        train: training rows (n_train >= 1).
        val: validation rows used only for early stopping (n_val >= 1).
        cfg: trainer settings.

    Returns:
        The history: per-epoch train / validation loss, best epoch, timing and device.
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"fit needs training and validation rows, got {len(train)} and {len(val)}")
    torch.manual_seed(cfg.seed)
    for m in model.modules():  # same init for the same seed, whatever ran before
        if isinstance(m, torch.nn.Linear):
            m.reset_parameters()
    torch.nn.init.zeros_(model.num_log_var)
    model.to(device)
    train, val = train.to(device), val.to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    opt = _optimizer(model, cfg, device)
    bs = cfg.resolved_batch_size(len(train))
    max_epochs, patience = cfg.resolved_epochs(len(train))
    val_eps = fixed_eps(model.config.latent_dim, k=4, device=device)
    hist = TrainHistory(device=str(device), batch_size=bs)
    sched = _scheduler(opt, cfg, max_epochs * math.ceil(len(train) / bs))
    best_state = copy.deepcopy(model.state_dict())
    bad_epochs, t0, seen = 0, time.perf_counter(), 0
    n, latent = len(train), model.config.latent_dim
    for epoch in range(max_epochs):
        model.train()
        beta = cfg.beta * min(1.0, (epoch + 1) / cfg.kl_warmup_epochs) if cfg.kl_warmup_epochs else cfg.beta
        order = torch.randperm(n, device=device, generator=gen)
        eps_all = torch.randn((n, latent), device=device, generator=gen)
        epoch_loss = torch.zeros((), device=device)
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            part = train.rows(idx)
            # fp32 on CUDA too: bf16 autocast made these small MLPs' steps slower on an H100, not faster
            # (BENCHMARKS.md, Training throughput), and their scores are no better for it
            loss_rows = negative_elbo(model, part, eps_all[idx].unsqueeze(0), beta=beta, free_bits=cfg.free_bits)
            if cfg.trim_fraction > 0:  # contaminated training data: drop the worst-fitting rows of the batch
                keep = max(int(len(idx) * (1.0 - cfg.trim_fraction)), 1)
                loss_rows = torch.topk(loss_rows, keep, largest=False).values
            loss = loss_rows.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            epoch_loss += loss.detach() * len(idx)
        seen += n
        hist.train_loss.append(float(epoch_loss) / n)
        v = evaluate(model, val, val_eps, trim=cfg.val_trim)
        hist.val_loss.append(v)
        # Up to min_epochs every epoch replaces the snapshot and resets the best-so-far loss,
        # so neither early stopping nor the restored weights can come from the early plateau.
        warm = epoch + 1 <= cfg.min_epochs
        if warm or v < hist.best_val_loss - cfg.min_delta * abs(hist.best_val_loss) or hist.best_epoch < 0:
            hist.best_val_loss, hist.best_epoch, bad_epochs = v, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if bad_epochs >= patience:
                hist.stopped_early = True
                break
        if not torch.isfinite(torch.tensor(v)):
            raise FloatingPointError(f"validation loss became {v} at epoch {epoch}; try a lower lr")
    model.load_state_dict(best_state)
    model.eval()
    hist.seconds = time.perf_counter() - t0
    hist.samples_per_s = seen / max(hist.seconds, 1e-9)
    log.info(
        "trained %d epochs on %s in %.1fs, best epoch %d", len(hist.train_loss), device, hist.seconds, hist.best_epoch
    )
    return hist
