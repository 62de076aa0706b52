"""Pure PyTorch variational autoencoder for tabular anomaly detection.

Only torch and numpy are imported here: this package runs on a bare GPU box.
"""

from vae.config import ModelConfig, TrainConfig
from vae.model import TabularBatch, TabularVAE
from vae.score import score_batches
from vae.train import TrainHistory, fit

__all__ = [
    "ModelConfig",
    "TabularBatch",
    "TabularVAE",
    "TrainConfig",
    "TrainHistory",
    "fit",
    "score_batches",
]
