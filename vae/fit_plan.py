"""What one ensemble fit is given and what it reports: the plan, the model kind, each member's history."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn


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

    @classmethod
    def of(cls, config: object, **resolved: Any) -> FitPlan:
        """The plan of a training config: every field of the plan that the config has by name, then ``resolved``
        (the values the config settles per training set, and those it names differently)."""
        given = {f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)}
        return cls(**{**given, **resolved})


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
