"""Networks and the parameterizations that turn them into diffusion models."""

from compdiff.models.diffusion import PARAMETERIZATIONS, DiffusionModel, is_energy, predict
from compdiff.models.mlp import ResidualMLP
from compdiff.models.unet import UNet

__all__ = ["PARAMETERIZATIONS", "DiffusionModel", "ResidualMLP", "UNet", "is_energy",
           "predict"]
