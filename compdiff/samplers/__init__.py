"""Annealed MCMC samplers over compositions, chosen by name.

>>> hmc = samplers.get("hmc", steps_per_level=3, leapfrog=3, step=StepRule(0.03))
>>> x, stats = samplers.sample(target, hmc, schedule, key, num=1000)
"""

from compdiff.samplers.annealed import SampleStats, chain_mesh, run_chain, sample, tune_step
from compdiff.samplers.equal_cost import (
    LevelShift,
    equal_cost_levels,
    last_levels,
    shift_levels,
    shift_schedule,
)
from compdiff.samplers.kernels import ChainState, LevelParams
from compdiff.samplers.registry import MassRule, Sampler, StepRule, get, names, register

__all__ = [
    "ChainState", "LevelParams", "LevelShift", "MassRule", "SampleStats", "Sampler", "StepRule",
    "chain_mesh", "equal_cost_levels", "get", "last_levels", "names", "register", "run_chain",
    "sample", "shift_levels", "shift_schedule", "tune_step",
]
