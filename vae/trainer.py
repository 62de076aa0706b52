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

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

log = logging.getLogger(__name__)
EVAL_CHUNK = 16384  # validation rows per member evaluated at once
EPS_SEED = 20140101  # seed of the fixed draws of validation losses and scores: part of the score's definition


@dataclass
class TrainHistory:
    """What happened to one member during :func:`fit_members`; losses are mean -ELBO per row (nats).

    ``seconds`` and ``samples_per_s`` are the whole ensemble's: its members train together (the
    samples of every member per second of wall time).
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = float("inf")
    stopped_early: bool = False
    stopped_by_check: bool = False
    seconds: float = 0.0
    device: str = "cpu"
    batch_size: int = 0
    samples_per_s: float = 0.0


@dataclass(frozen=True)
class FitPlan:
    """The resolved settings of one ensemble fit (the configs of each model kind build it).

    Attributes:
        batch_size: rows per member per step.
        max_epochs, patience, min_epochs, min_delta: the epoch budget and early stopping: a member stops
            after ``patience`` epochs without a validation loss better by ``min_delta`` (relative); up to
            ``min_epochs`` every epoch replaces its snapshot.
        lr, weight_decay, lr_schedule: Adam's settings; ``cosine`` decays lr over the budget's steps.
        beta, kl_warmup_epochs, free_bits: the KL weight, its linear warm-up from 0, free bits per dimension.
        trim_fraction: share of each batch's worst-fitting rows left out of the gradient.
        val_trim: share of the highest validation losses left out of the early-stopping statistic.
        val_draws: fixed reparameterisation draws of the validation loss.
        bf16_cpu, bf16_cuda: bfloat16 autocast for the training steps on that device (validation stays
            float32).
        device: ``auto``, ``cpu`` or ``cuda``; cpu_threads: torch threads on the CPU (None keeps torch's).
    """

    batch_size: int
    max_epochs: int
    patience: int
    min_epochs: int = 0
    min_delta: float = 1e-4
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    free_bits: float = 0.0
    trim_fraction: float = 0.0
    val_trim: float = 0.0
    val_draws: int = 4
    bf16_cpu: bool = False
    bf16_cuda: bool = False
    device: str = "auto"
    cpu_threads: int | None = 1


Loss = Callable[[nn.Module, Any, torch.Tensor, float, float], torch.Tensor]
EpochCheck = tuple[int, Callable[[Sequence[nn.Module]], bool]]
"""``(epoch, stop)``: after that many epochs ``stop(models)`` sees every member's current weights (in eval mode);
True ends the fit there, every history marked ``stopped_by_check``."""
"""``loss(model, rows, eps, beta, free_bits) -> (n,)`` per-row training loss; eps is (k, n or 1, latent_dim)."""


@dataclass(frozen=True)
class ModelKind:
    """What the trainer needs from a kind of VAE.

    Attributes:
        loss: the per-row -ELBO (weighted by beta, with free bits where the kind has them).
        init: re-initialise a model's parameters (called after seeding torch).
        latent_dim: reads a model's latent size.
        lr_factors: parameter name -> factor on the learning rate (1 for names not listed).
    """

    loss: Loss
    init: Callable[[nn.Module], None]
    latent_dim: Callable[[nn.Module], int]
    lr_factors: dict[str, float] = field(default_factory=dict)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(device)


def take(pool: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` (any shape) of a tensor or of a tuple of row-aligned tensors (e.g. a TabularBatch)."""
    if isinstance(pool, tuple):
        return type(pool)(*(t[index] for t in pool))
    return pool[index]


def fixed_eps(latent_dim: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(k, 1, latent_dim) standard-normal draws from a fixed seed, made on the CPU, shared by every row."""
    gen = torch.Generator().manual_seed(EPS_SEED)
    return torch.randn((k, 1, latent_dim), generator=gen).to(device)


class _MemberLoss(nn.Module):
    """``forward`` is the kind's loss of ``model``: what ``functional_call`` evaluates with stacked weights."""

    def __init__(self, model: nn.Module, loss: Loss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, rows: Any, eps: torch.Tensor, beta: float, free_bits: float) -> torch.Tensor:
        return self.loss(self.model, rows, eps, beta, free_bits)


class _Ensemble:
    """The stacked parameters of the members and their batched loss."""

    def __init__(self, models: Sequence[nn.Module], kind: ModelKind) -> None:
        params, _ = stack_module_state(list(models))
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.wrapper = _MemberLoss(copy.deepcopy(models[0]).to("meta"), kind.loss)

    def losses(self, rows: Any, eps: torch.Tensor, beta: float, free_bits: float) -> torch.Tensor:
        """(M, n) per-row losses; ``rows`` and ``eps`` lead with the member dimension."""
        return self._vmapped(rows, (eps, 0), (beta, None), free_bits)

    def shared_eps_losses(self, rows: Any, eps: torch.Tensor) -> torch.Tensor:
        """(M, n) -ELBO (beta = 1) of every member on its rows with draws ``eps`` shared by all members."""
        return self._vmapped(rows, (eps, None), (1.0, None), 0.0)

    def _vmapped(
        self, rows: Any, eps: tuple[torch.Tensor, int | None], beta: tuple[Any, int | None], free_bits: float
    ) -> torch.Tensor:
        # A row type with fields (a TabularBatch) travels through vmap as a plain tuple and is rebuilt inside.
        make = type(rows) if isinstance(rows, tuple) else None
        fields = tuple(rows) if make is not None else rows

        def one(p: dict[str, torch.Tensor], r: Any, e: torch.Tensor, b: Any) -> torch.Tensor:
            named = {f"model.{k}": v for k, v in p.items()}
            return functional_call(self.wrapper, named, (make(*r) if make else r, e, b, free_bits))

        if len(next(iter(self.params.values()))) == 1:  # one member: the plain call, without vmap's overhead
            first = {k: v[0] for k, v in self.params.items()}
            rows_0 = tuple(f[0] for f in fields) if make is not None else fields[0]
            e0 = eps[0][0] if eps[1] == 0 else eps[0]
            b0 = beta[0][0] if beta[1] == 0 else beta[0]
            return one(first, rows_0, e0, b0).unsqueeze(0)
        return vmap(one, in_dims=(0, 0, eps[1], beta[1]))(self.params, fields, eps[0], beta[0])


def _optimizer(ens: _Ensemble, kind: ModelKind, plan: FitPlan) -> torch.optim.Optimizer:
    groups: dict[float, list[torch.Tensor]] = {}
    for name, p in ens.params.items():
        groups.setdefault(kind.lr_factors.get(name, 1.0), []).append(p)
    param_groups = [{"params": ps, "lr": plan.lr * f} for f, ps in groups.items()]
    try:  # the fused kernel cuts per-step overhead on both CPU and CUDA
        return torch.optim.Adam(param_groups, lr=plan.lr, weight_decay=plan.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(param_groups, lr=plan.lr, weight_decay=plan.weight_decay)


def _scheduler(
    opt: torch.optim.Optimizer, plan: FitPlan, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-step lr schedule: cosine decay lr_t = lr * (1 + cos(pi * t / T)) / 2, or None (constant)."""
    if plan.lr_schedule != "cosine":
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t / max(total_steps, 1), 1.0)))
    )


def _padded(rows: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, n_max) row positions (padded by repeating each member's first row) and (M,) real counts."""
    n_max = max(len(r) for r in rows)
    out = torch.stack([r[torch.arange(n_max) % len(r)] for r in rows]).to(device)
    return out, torch.tensor([len(r) for r in rows], device=device)


def trimmed_means(losses: torch.Tensor, counts: torch.Tensor, trim: float) -> torch.Tensor:
    """(M,) each row's mean of its first ``counts[i]`` values of ``losses`` (M, n), leaving out the highest
    ``trim`` share of them (at least one value is kept). A NaN among a row's values makes its mean NaN.
    """
    n = losses.shape[1]
    pad = torch.arange(n, device=losses.device).unsqueeze(0) >= counts.unsqueeze(1)
    ordered = losses.nan_to_num(nan=float("inf")).masked_fill(pad, float("inf")).sort(dim=1).values
    keep = torch.clamp((counts.double() * (1.0 - trim)).long(), min=1)
    total = ordered.cumsum(dim=1).gather(1, (keep - 1).unsqueeze(1)).squeeze(1)
    nan = (torch.isnan(losses) & ~pad).any(dim=1)
    return (total / keep).masked_fill(nan, float("nan"))


@torch.no_grad()
def _validation_losses(
    ens: _Ensemble, pool: Any, val: torch.Tensor, counts: torch.Tensor, eps: torch.Tensor, trim: float
) -> list[float]:
    """Each member's mean -ELBO over its own validation rows (its highest ``trim`` share left out)."""
    chunks = [
        ens.shared_eps_losses(take(pool, val[:, s : s + EVAL_CHUNK]), eps).float()
        for s in range(0, val.shape[1], EVAL_CHUNK)
    ]
    return [float(v) for v in trimmed_means(torch.cat(chunks, dim=1), counts, trim).cpu()]


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
    previous = torch.get_num_threads()
    if device.type == "cpu" and plan.cpu_threads:
        torch.set_num_threads(plan.cpu_threads)
    try:
        return _fit(models, kind, pool, train_rows, val_rows, plan, seeds, device, check)
    finally:
        torch.set_num_threads(previous)


def _fit(
    models: Sequence[nn.Module],
    kind: ModelKind,
    pool: Any,
    train_rows: Sequence[torch.Tensor],
    val_rows: Sequence[torch.Tensor],
    plan: FitPlan,
    seeds: Sequence[int],
    device: torch.device,
    check: EpochCheck | None = None,
) -> list[TrainHistory]:
    for model, seed in zip(models, seeds, strict=True):  # same init for the same seed, whatever ran before
        torch.manual_seed(seed)
        kind.init(model)
        model.to(device)
    pool = type(pool)(*(t.to(device) for t in pool)) if isinstance(pool, tuple) else pool.to(device)
    m, bs, latent = len(models), plan.batch_size, kind.latent_dim(models[0])
    ens = _Ensemble(models, kind)
    opt = _optimizer(ens, kind, plan)
    train = [t.to(device) for t in train_rows]
    n_max = max(len(t) for t in train)
    steps = math.ceil(n_max / bs)
    sched = _scheduler(opt, plan, plan.max_epochs * steps)
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    val, val_counts = _padded(val_rows, device)
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
                _restore(ens, best, ~active)  # a stopped member no longer changes
            epoch_loss += loss.detach() * bs
        seen += int(active.sum()) * steps * bs
        vals = _validation_losses(ens, pool, val, val_counts, val_eps, plan.val_trim)
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
                raise FloatingPointError(f"validation loss became {v} at epoch {epoch} (member {i}); try a lower lr")
        _snapshot(ens, best, improved)
        if not bool(active.any()):
            break
        if check is not None and epoch + 1 == check[0] and _check_stops(ens, models, check[1]):
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


@torch.no_grad()
def _check_stops(ens: _Ensemble, models: Sequence[nn.Module], stop: Callable[[Sequence[nn.Module]], bool]) -> bool:
    """Load every member's current weights into ``models`` (eval mode) and ask ``stop``."""
    for i, model in enumerate(models):
        model.load_state_dict({k: v[i].detach().clone() for k, v in ens.params.items()})
        model.eval()
    return bool(stop(models))


@torch.no_grad()
def _snapshot(ens: _Ensemble, best: dict[str, torch.Tensor], members: torch.Tensor) -> None:
    """Copy the current weights of ``members`` (M,) bool into ``best``."""
    if bool(members.any()):
        for k, v in ens.params.items():
            best[k][members] = v.detach()[members]


@torch.no_grad()
def _restore(ens: _Ensemble, best: dict[str, torch.Tensor], members: torch.Tensor) -> None:
    """Put the best weights of ``members`` (M,) bool back (a stopped member's optimiser state still moves them)."""
    for k, v in ens.params.items():
        v[members] = best[k][members]


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
