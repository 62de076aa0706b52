"""One seeded trainer for every VAE kind: an ensemble of members trained as one batched computation.

The members' parameters are stacked along a leading member dimension (``torch.func.stack_module_state``);
each step evaluates every member's loss on its own rows with ``torch.func.vmap`` over ``functional_call``,
so one kernel launch serves all members, on the CPU and on CUDA. Adam is element-wise, so one optimiser
over the stacked tensors updates each member as an optimiser of its own would. Each member keeps its own
seed (initial weights, shuffling, reparameterisation noise), its own training and validation rows, its
own early stopping and its best weights; a stopped member no longer changes.

The model kind supplies its loss (the likelihood lives with the model) and its initialisation
(:class:`ModelKind`); the trainer does seeding, the optimiser, KL warm-up, early stopping and snapshots.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from vae.fit_plan import EpochCheck, FitPlan, ModelKind, TrainHistory
from vae.stacked import Ensemble, check_stops, optimizer, padded, restore, scheduler, snapshot, take, validation_losses

log = logging.getLogger(__name__)
EPS_SEED = 20140101  # seed of the fixed draws of validation losses and scores: part of the score's definition


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(device)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch on ``n`` threads inside the block (unchanged when None); the previous count restored after."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fixed_eps(latent_dim: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(k, 1, latent_dim) standard-normal draws from a fixed seed, made on the CPU, shared by every row."""
    gen = torch.Generator().manual_seed(EPS_SEED)
    return torch.randn((k, 1, latent_dim), generator=gen).to(device)


def fit_members(
    models: Sequence[nn.Module],
    kind: ModelKind,
    pool: Any,
    train_rows: Sequence[torch.Tensor],
    val_rows: Sequence[torch.Tensor],
    plan: FitPlan,
    seeds: Sequence[int],
    check: EpochCheck | None = None,
) -> list[TrainHistory]:
    """Train ``models`` (re-initialised from ``seeds``) in place, member i on rows ``train_rows[i]`` of ``pool``,
    early-stopping on ``val_rows[i]``; each ends with its best validation weights, on the CPU, in eval mode.

    Every member takes ``ceil(max_i n_i / batch_size)`` full batches per epoch: a member with fewer rows
    takes its first few rows of the epoch's order twice.

    Args:
        models: M networks of one kind and shape.
        kind: the kind's loss and initialisation.
        pool: the rows, a tensor (n, ...) or a tuple of row-aligned tensors (a TabularBatch).
        train_rows, val_rows: M int64 index tensors into ``pool`` (each non-empty).
        plan: the settings.
        seeds: M seeds (initial weights, shuffling, noise).
        check: an optional early verdict on the whole fit (:data:`EpochCheck`), e.g. that a latent dimension
            collapsed; a stopped fit still ends with each member's best weights so far.

    Returns:
        One history per member.

    Raises:
        ValueError: mismatched lengths or an empty set of rows.
        FloatingPointError: a member's validation loss became infinite or NaN.
    """
    if not (len(models) == len(train_rows) == len(val_rows) == len(seeds)) or not models:
        raise ValueError(
            f"fit_members needs as many models, row sets and seeds (>= 1), got {len(models)}, "
            f"{len(train_rows)}, {len(val_rows)} and {len(seeds)}"
        )
    if any(len(t) == 0 for t in train_rows) or any(len(v) == 0 for v in val_rows):
        raise ValueError("fit_members needs training and validation rows for every member, got an empty set")
    device = resolve_device(plan.device)
    with _threads(plan.cpu_threads if device.type == "cpu" else None):
        for model, seed in zip(models, seeds, strict=True):  # same init for the same seed, whatever ran before
            torch.manual_seed(seed)
            kind.init(model)
            model.to(device)
        pool = type(pool)(*(t.to(device) for t in pool)) if isinstance(pool, tuple) else pool.to(device)
        m, bs, latent = len(models), plan.batch_size, kind.latent_dim(models[0])
        ens = Ensemble(models, kind)
        opt = optimizer(ens, kind, plan)
        train = [t.to(device) for t in train_rows]
        n_max = max(len(t) for t in train)
        steps = math.ceil(n_max / bs)
        sched = scheduler(opt, plan, plan.max_epochs * steps)
        gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        val, val_counts = padded(val_rows, device)
        val_eps = fixed_eps(latent, plan.val_draws, device)
        hists = [TrainHistory(device=str(device), batch_size=bs) for _ in range(m)]
        best = {k: v.detach().clone() for k, v in ens.params.items()}
        active = torch.ones(m, dtype=torch.bool, device=device)
        bad = [0] * m
        t0, seen = time.perf_counter(), 0
        use_bf16 = plan.bf16_cuda if device.type == "cuda" else plan.bf16_cpu
        for epoch in range(plan.max_epochs):
            beta = plan.beta * min(1.0, (epoch + 1) / plan.kl_warmup_epochs) if plan.kl_warmup_epochs else plan.beta
            positions = torch.arange(steps * bs, device=device)
            order = torch.stack(
                [
                    t[torch.randperm(len(t), device=device, generator=g)][positions % len(t)]
                    for t, g in zip(train, gens, strict=True)
                ]
            )
            eps = torch.stack([torch.randn((steps * bs, latent), device=device, generator=g) for g in gens])
            epoch_loss = torch.zeros(m, device=device)
            weight = active.float()
            for s in range(steps):
                cols = slice(s * bs, (s + 1) * bs)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    rows_loss = ens.losses(take(pool, order[:, cols]), eps[:, cols].unsqueeze(1), beta, plan.free_bits)
                rows_loss = rows_loss.float()
                if plan.trim_fraction > 0:  # contaminated training data: drop the worst-fitting rows of the batch
                    keep = max(int(bs * (1.0 - plan.trim_fraction)), 1)
                    rows_loss = torch.topk(rows_loss, keep, dim=1, largest=False).values
                loss = rows_loss.mean(dim=1)
                opt.zero_grad(set_to_none=True)
                (loss * weight).sum().backward()
                opt.step()
                if sched is not None:
                    sched.step()
                if not bool(active.all()):
                    restore(ens, best, ~active)  # a stopped member no longer changes
                epoch_loss += loss.detach() * bs
            seen += int(active.sum()) * steps * bs
            vals = validation_losses(ens, pool, val, val_counts, val_eps, plan.val_trim)
            improved = torch.zeros(m, dtype=torch.bool, device=device)
            for i in range(m):
                if not bool(active[i]):
                    continue
                h, v = hists[i], vals[i]
                h.train_loss.append(float(epoch_loss[i]) / (steps * bs))
                h.val_loss.append(v)
                # Up to min_epochs every epoch replaces the snapshot and resets the best-so-far loss,
                # so neither early stopping nor the restored weights can come from the early plateau.
                warm = epoch + 1 <= plan.min_epochs
                if warm or v < h.best_val_loss - plan.min_delta * abs(h.best_val_loss) or h.best_epoch < 0:
                    h.best_val_loss, h.best_epoch, bad[i] = v, epoch, 0
                    improved[i] = True
                else:
                    bad[i] += 1
                    if bad[i] >= plan.patience:
                        h.stopped_early = True
                        active[i] = False
                if not math.isfinite(v):
                    raise FloatingPointError(
                        f"validation loss became {v} at epoch {epoch} (member {i}); try a lower lr"
                    )
            snapshot(ens, best, improved)
            if not bool(active.any()):
                break
            if check is not None and epoch + 1 == check[0] and check_stops(ens, models, check[1]):
                for h in hists:
                    h.stopped_by_check = True
                break
        seconds = time.perf_counter() - t0
        for i, model in enumerate(models):
            model.load_state_dict({k: v[i].clone() for k, v in best.items()})
            model.to("cpu").eval()
            hists[i].seconds = seconds
            hists[i].samples_per_s = seen / max(seconds, 1e-9)
        log.info(
            "trained %d members for %d epochs on %s in %.1fs", m, max(len(h.train_loss) for h in hists), device, seconds
        )
        return hists


def fit_one(model: nn.Module, kind: ModelKind, train: Any, val: Any, plan: FitPlan, seed: int) -> TrainHistory:
    """Train one model on rows ``train``, early-stopping on ``val`` (an ensemble of one)."""
    n_train = len(train[0]) if isinstance(train, tuple) else len(train)
    n_val = len(val[0]) if isinstance(val, tuple) else len(val)
    if isinstance(train, tuple):
        pool = type(train)(*(torch.cat([a, b]) for a, b in zip(train, val, strict=True)))
    else:
        pool = torch.cat([train, val])
    return fit_members(
        [model], kind, pool, [torch.arange(n_train)], [torch.arange(n_train, n_train + n_val)], plan, [seed]
    )[0]
