"""Configuration dataclasses for the tabular VAE and its trainer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from vae.fit_plan import FitPlan

LIKELIHOODS = ("gaussian", "student_t", "laplace")


class Serialisable:
    """``to_dict`` and ``from_dict`` of a frozen config dataclass saved as JSON with a model."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """The config that ``to_dict`` wrote, read back from JSON: lists become tuples again, a field the dict
        lacks (written by an older version) keeps its default, and keys of fields that no longer exist are
        ignored. Values are checked by the class's ``__post_init__``."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: _tuples(v) for k, v in d.items() if k in names})


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


@dataclass(frozen=True)
class ModelConfig(Serialisable):
    """Shape of a :class:`vae.model.TabularVAE`.

    Attributes:
        n_numeric: number of numeric (Gaussian) features.
        cat_cardinalities: number of known categories of each categorical feature.
        hidden: widths of the encoder's hidden layers (the decoder mirrors them).
        latent_dim: size of the latent code z.
        min_log_var: floor of each numeric feature's learned log-variance, so that a
            constant or near-constant feature cannot drive the likelihood to infinity.
        likelihood: numeric likelihood: ``gaussian``, ``student_t`` (fixed ``nu`` degrees of
            freedom) or ``laplace``; the learned s_j is the log of the squared scale.
        nu: degrees of freedom of the Student-t likelihood.
    """

    n_numeric: int
    cat_cardinalities: tuple[int, ...] = ()
    hidden: tuple[int, ...] = (64, 32)
    latent_dim: int = 8
    min_log_var: float = -6.0
    likelihood: str = "gaussian"
    nu: float = 4.0

    def __post_init__(self) -> None:
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if not self.nu > 0:
            raise ValueError(f"nu must be > 0, got {self.nu!r}")
        if self.n_numeric < 0:
            raise ValueError(f"n_numeric must be >= 0, got {self.n_numeric!r}")
        if self.n_numeric + len(self.cat_cardinalities) == 0:
            raise ValueError("a VAE needs at least one feature, got 0 numeric and 0 categorical")
        if any(k < 1 for k in self.cat_cardinalities):
            raise ValueError(f"every categorical cardinality must be >= 1, got {self.cat_cardinalities!r}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {self.hidden!r}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim!r}")

    @property
    def input_dim(self) -> int:
        """Width of the encoder input: numeric values, their observed-mask, one-hot categories."""
        return 2 * self.n_numeric + sum(self.cat_cardinalities)

    @classmethod
    def for_data(
        cls,
        n_numeric: int,
        cat_cardinalities: tuple[int, ...] = (),
        hidden: tuple[int, ...] | None = None,
        latent_dim: int | None = None,
    ) -> ModelConfig:
        """Size the network from the data, unless sizes are given.

        Rule (documented in docs/how-it-works.md): with ``d`` the number of encoded input
        values (numeric + one-hot), the first hidden layer has
        ``clip(2 * d, 32, 512)`` units, the second half of that (at least 16), and
        the latent code has ``clip(ceil(d / 4), 2, 32)`` dimensions.
        """
        d = n_numeric + sum(cat_cardinalities)
        if hidden is None:
            h1 = int(min(max(2 * d, 32), 512))
            hidden = (h1, max(h1 // 2, 16))
        if latent_dim is None:
            latent_dim = int(min(max(math.ceil(d / 4), 2), 32))
        return cls(
            n_numeric=n_numeric,
            cat_cardinalities=tuple(int(k) for k in cat_cardinalities),
            hidden=tuple(int(h) for h in hidden),
            latent_dim=int(latent_dim),
        )


@dataclass(frozen=True)
class TrainerSettings(Serialisable):
    """The settings of :func:`vae.trainer.fit_members` that both training configs take, with their checks.

    Attributes:
        batch_size: rows (or images) per step; None: chosen from the training set's size by the config's
            ``resolved_batch_size``.
        lr: Adam learning rate.
        min_delta: relative improvement of the validation loss that counts as better.
        seed: seeds parameter init, shuffling and the reparameterisation noise.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.
        cpu_threads: torch threads while training on the CPU (restored afterwards); ``None`` keeps torch's
            setting. 1 by default (../shared/NOTES-torch-pyod.md gives the measurements).
    """

    batch_size: int | None = None
    lr: float = 1e-3
    min_delta: float = 1e-4
    seed: int = 0
    device: str = "auto"
    cpu_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


@dataclass(frozen=True)
class TrainConfig(TrainerSettings):
    """Settings of the table VAEs' training (:func:`vae.trainer.fit_members` through :meth:`plan`); those of
    :class:`TrainerSettings` (a ``batch_size`` of None picks ``clip(n_train // 32, 64, 1024)`` rounded down to a
    power of two), and:

    Attributes:
        max_epochs: upper bound on passes over the training rows; ``None`` gives a budget of
            about ``max_steps`` optimiser steps: ``clip(ceil(max_steps / steps_per_epoch), 20, 2000)``.
        max_steps: the step budget used when ``max_epochs`` is None.
        weight_decay: Adam weight decay.
        beta: weight of the KL term in the training loss (1.0 = the ELBO; Higgins et al. 2017). The tabular
            detector overrides it by default (``VAEAnomalyDetector.kl_weights``: 1 unless a latent dimension
            collapses, then 0.2). Scores and early stopping always use the true -ELBO (beta = 1), a bound on
            -log p(x).
        free_bits: minimum KL per latent dimension in the training loss (nats; Kingma et al.
            2016); 0 = the plain KL term.
        patience: epochs without a better validation loss before stopping; ``None`` gives
            ``max(30, max_epochs // 10)``.
        trim_fraction: for training data that contains some anomalies: in every batch the
            ``trim_fraction`` of rows with the highest loss is left out of the gradient (a trimmed
            ELBO), so the model is not fitted to them. 0 = plain training.
        val_trim: fraction of the highest per-row validation losses left out of the
            early-stopping statistic (0 = the plain mean -ELBO).
        min_epochs: epochs before early stopping may trigger and before a weight snapshot can
            be kept as the best (with heavy-tailed features the validation -ELBO often rises in the
            first epochs and only improves later).
        kl_warmup_epochs: the KL weight rises linearly from 0 to ``beta`` over these epochs
            (KL annealing, Bowman et al. 2016); 20 by default, 0 = no warm-up.
        lr_schedule: ``"constant"`` or ``"cosine"``: lr_t = lr * (1 + cos(pi t / T)) / 2 over the
            T steps of the epoch budget (Loshchilov & Hutter 2017).
    """

    max_epochs: int | None = 200
    max_steps: int = 20000
    weight_decay: float = 0.0
    beta: float = 0.2
    free_bits: float = 0.0
    patience: int | None = 30
    val_trim: float = 0.0
    trim_fraction: float = 0.0
    min_epochs: int = 20
    kl_warmup_epochs: int = 20
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs!r}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta!r}")
        if self.free_bits < 0:
            raise ValueError(f"free_bits must be >= 0, got {self.free_bits!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience!r}")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction!r}")
        if not 0.0 <= self.val_trim < 0.5:
            raise ValueError(f"val_trim must be in [0, 0.5), got {self.val_trim!r}")
        if self.min_epochs < 0 or self.kl_warmup_epochs < 0:
            raise ValueError(
                f"min_epochs and kl_warmup_epochs must be >= 0, got {self.min_epochs!r} and {self.kl_warmup_epochs!r}"
            )
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")

    def resolved_epochs(self, n_train: int) -> tuple[int, int]:
        """(max_epochs, patience) for ``n_train`` training rows."""
        steps_per_epoch = math.ceil(n_train / self.resolved_batch_size(n_train))
        epochs = self.max_epochs or int(min(max(math.ceil(self.max_steps / steps_per_epoch), 20), 2000))
        return epochs, self.patience or max(30, epochs // 10)

    def resolved_batch_size(self, n_train: int) -> int:
        if self.batch_size is not None:
            return self.batch_size
        b = min(max(n_train // 32, 64), 1024)
        return 1 << (b.bit_length() - 1)

    def plan(self, n_train: int) -> FitPlan:
        """The trainer's settings for members of ``n_train`` training rows (float32 on every device)."""
        from vae.fit_plan import FitPlan

        epochs, patience = self.resolved_epochs(n_train)
        return FitPlan.of(
            self, batch_size=self.resolved_batch_size(n_train), max_epochs=epochs, patience=patience, val_draws=4
        )


@dataclass(frozen=True)
class ImageTrainConfig(TrainerSettings):
    """Settings of the image VAEs' training (:func:`vae.trainer.fit_members` through :meth:`plan`); those of
    :class:`TrainerSettings` (a ``batch_size`` of None picks ``clip(n_train // 16, 16, 128)``, so that a small
    training set still gets at least 16 steps per epoch), and:

    Attributes:
        max_epochs: upper bound on passes over the training images (20: docs/decisions/ gives the evidence).
        beta: weight of the KL term (1.0 = the ELBO).
        patience: epochs without a better validation loss before stopping.
        min_epochs: epochs before early stopping may trigger (and before a snapshot is kept as the best).
        kl_warmup_epochs: the KL weight rises linearly from 0 to ``beta`` over these epochs (0 = none).
        cpu_bf16: bf16 autocast for training steps on the CPU too (CUDA always uses it); the validation loss
            and all scores are computed in float32.
    """

    max_epochs: int = 20
    beta: float = 1.0
    patience: int = 8
    min_epochs: int = 5
    kl_warmup_epochs: int = 5
    cpu_bf16: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_epochs < 1 or self.patience < 1:
            raise ValueError(f"max_epochs and patience must be >= 1, got {self.max_epochs!r} and {self.patience!r}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta!r}")

    def resolved_batch_size(self, n_train: int) -> int:
        return self.batch_size or int(min(max(n_train // 16, 16), 128))

    def plan(self, n_train: int) -> FitPlan:
        """The trainer's settings for ``n_train`` training images (bf16 steps on CUDA, and on the CPU with
        ``cpu_bf16``)."""
        from vae.fit_plan import FitPlan

        return FitPlan.of(
            self, batch_size=self.resolved_batch_size(n_train), val_draws=2, bf16_cpu=self.cpu_bf16, bf16_cuda=True
        )
