"""Networks and the parameterizations that turn them into diffusion models."""

from compdiff.models.diffusion import PARAMETERIZATIONS, DiffusionModel, is_energy, predict
from compdiff.models.mlp import ResidualMLP

__all__ = ["PARAMETERIZATIONS", "DiffusionModel", "ResidualMLP", "is_energy", "predict"]
