"""The members of an ensemble as one stacked computation: batched losses, optimiser, schedule, snapshots."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from vae.fit_plan import FitPlan, Loss, ModelKind

EVAL_CHUNK = 16384  # validation rows per member evaluated at once


def take(pool: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` (any shape) of a tensor or of a tuple of row-aligned tensors (e.g. a TabularBatch)."""
    if isinstance(pool, tuple):
        return type(pool)(*(t[index] for t in pool))
    return pool[index]


class _MemberLoss(nn.Module):
    """``forward`` is the kind's loss of ``model``: what ``functional_call`` evaluates with stacked weights."""

    def __init__(self, model: nn.Module, loss: Loss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, rows: Any, eps: torch.Tensor, beta: float, free_bits: float) -> torch.Tensor:
        return self.loss(self.model, rows, eps, beta, free_bits)


class Ensemble:
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


def optimizer(ens: Ensemble, kind: ModelKind, plan: FitPlan) -> torch.optim.Optimizer:
    groups: dict[float, list[torch.Tensor]] = {}
    for name, p in ens.params.items():
        groups.setdefault(kind.lr_factors.get(name, 1.0), []).append(p)
    param_groups = [{"params": ps, "lr": plan.lr * f} for f, ps in groups.items()]
    try:  # the fused kernel cuts per-step overhead on both CPU and CUDA
        return torch.optim.Adam(param_groups, lr=plan.lr, weight_decay=plan.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(param_groups, lr=plan.lr, weight_decay=plan.weight_decay)


def scheduler(
    opt: torch.optim.Optimizer, plan: FitPlan, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-step lr schedule: cosine decay lr_t = lr * (1 + cos(pi * t / T)) / 2, or None (constant)."""
    if plan.lr_schedule != "cosine":
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t / max(total_steps, 1), 1.0)))
    )


def padded(rows: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
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
def validation_losses(
    ens: Ensemble, pool: Any, val: torch.Tensor, counts: torch.Tensor, eps: torch.Tensor, trim: float
) -> list[float]:
    """Each member's mean -ELBO over its own validation rows (its highest ``trim`` share left out)."""
    chunks = [
        ens.shared_eps_losses(take(pool, val[:, s : s + EVAL_CHUNK]), eps).float()
        for s in range(0, val.shape[1], EVAL_CHUNK)
    ]
    return [float(v) for v in trimmed_means(torch.cat(chunks, dim=1), counts, trim).cpu()]


@torch.no_grad()
def check_stops(ens: Ensemble, models: Sequence[nn.Module], stop: Callable[[Sequence[nn.Module]], bool]) -> bool:
    """Load every member's current weights into ``models`` (eval mode) and ask ``stop``."""
    for i, model in enumerate(models):
        model.load_state_dict({k: v[i].detach().clone() for k, v in ens.params.items()})
        model.eval()
    return bool(stop(models))


@torch.no_grad()
def snapshot(ens: Ensemble, best: dict[str, torch.Tensor], members: torch.Tensor) -> None:
    """Copy the current weights of ``members`` (M,) bool into ``best``."""
    if bool(members.any()):
        for k, v in ens.params.items():
            best[k][members] = v.detach()[members]


@torch.no_grad()
def restore(ens: Ensemble, best: dict[str, torch.Tensor], members: torch.Tensor) -> None:
    """Put the best weights of ``members`` (M,) bool back (a stopped member's optimiser state still moves them)."""
    for k, v in ens.params.items():
        v[members] = best[k][members]
