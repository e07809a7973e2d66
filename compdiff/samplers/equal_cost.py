"""Reverse diffusion at the cost of an annealed MCMC sampler: the ``reverse_equal`` baseline.

An annealed sampler with ``K`` kernel steps of ``L`` gradients each costs
``T (1 + K L)`` score evaluations per chain; reverse diffusion on the same
``T`` levels costs ``T``. The fair baseline spends the same budget ``N`` on
reverse diffusion over a longer ``T'``-level schedule (models trained, or
oracles built, on it), stopped at the level ``offset + 1`` whose noise
``sigma'`` is closest to ``sigma_1`` of the ``T``-level schedule, with
``T' - offset = N`` (:func:`equal_cost_levels`). The ``reverse_equal`` sampler
(``samplers.get("reverse_equal", budget=N)``) takes the target and schedule
of ``T'`` levels and runs levels ``T'..offset + 1`` by relabelling them
``N..1`` (:class:`LevelShift`, :func:`shift_schedule`).
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import numpy as np

from compdiff import schedules
from compdiff.compose import Density
from compdiff.schedules import Schedule

Array = jnp.ndarray


@flax.struct.dataclass
class LevelShift(Density):
    """``inner`` with its levels relabelled: level ``t`` here is level ``t + offset`` there."""

    inner: Density
    offset: int = flax.struct.field(pytree_node=False, default=0)
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=False)

    def log_prob(self, x: Array, t: Array) -> Array:
        return self.inner.log_prob(x, t + self.offset)

    def score(self, x: Array, t: Array) -> Array:
        return self.inner.score(x, t + self.offset)

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        return self.inner.log_prob_and_score(x, t + self.offset)

    def describe(self) -> str:
        return f"{self.inner.describe()}[t+{self.offset}]"


def shift_levels(density: Density, offset: int) -> LevelShift:
    """``density`` with level ``t`` read as level ``t + offset``."""
    return LevelShift(inner=density, offset=offset, dim=density.dim,
                      has_log_prob=density.has_log_prob)


def shift_schedule(schedule: Schedule, offset: int) -> Schedule:
    """``schedule`` restricted to levels ``offset..T``, relabelled ``0..T - offset``."""
    if not 0 <= offset < schedule.num_levels:
        raise ValueError(f"offset must lie in [0, {schedule.num_levels}), got {offset}")
    return Schedule(**{f: getattr(schedule, f)[offset:]
                       for f in ("beta", "alpha", "abar", "sigma", "btilde")})


def equal_cost_levels(name: str, sigma_1: float, nfe: int) -> tuple[int, int]:
    """``(T', offset)`` with ``T' - offset = nfe`` and ``sigma'_{offset+1}`` closest to ``sigma_1``.

    Reverse diffusion over levels ``T'..offset+1`` costs one score evaluation
    per level, ``nfe`` in all.
    """
    for num_levels in range(nfe, 2 * nfe + 2):
        sigma = np.asarray(schedules.get(name, num_levels).sigma[1:], np.float64)
        offset = int(np.argmin(np.abs(sigma - sigma_1)))
        if num_levels - offset == nfe:
            return num_levels, offset
    raise ValueError(f"no {name} schedule runs {nfe} levels down to sigma={sigma_1:g}")


def last_levels(target: Density, schedule: Schedule, budget: int) -> tuple[LevelShift, Schedule]:
    """``target`` and ``schedule`` cut to their last ``budget`` levels, relabelled ``1..``."""
    if not 1 <= budget <= schedule.num_levels:
        raise ValueError(f"reverse_equal runs budget={budget} levels, but the schedule has "
                         f"{schedule.num_levels}; build the target on a schedule of at least "
                         "that many levels (samplers.equal_cost_levels gives one)")
    offset = schedule.num_levels - budget
    return shift_levels(target, offset), shift_schedule(schedule, offset)
