"""Pure PyTorch variational autoencoders (tables and images) and the one trainer of their ensembles.

Only torch and numpy are imported here: this package runs on a bare GPU box.
"""

from vae.config import ImageTrainConfig, ModelConfig, TrainConfig
from vae.fit_plan import FitPlan, TrainHistory
from vae.model import TabularBatch, TabularVAE
from vae.score import score_batches
from vae.trainer import fit_members, fit_one

__all__ = [
    "FitPlan",
    "ImageTrainConfig",
    "ModelConfig",
    "TabularBatch",
    "TabularVAE",
    "TrainConfig",
    "TrainHistory",
    "fit_members",
    "fit_one",
    "score_batches",
]
