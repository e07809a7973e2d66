"""Discrete-time variance-preserving noise schedules (docs/design.md section 1).

Levels are ``t = 0..T``; level 0 is the data. Every table has length ``T + 1``
and is indexed by the level itself, so ``schedule.sigma[t]`` is ``sigma_t``
with no off-by-one bookkeeping at call sites. Level-0 entries are the limits
of the definitions: ``beta_0 = 0``, ``abar_0 = 1``, ``sigma_0 = 0``.

- ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s``
- ``sigma_t = sqrt(1 - abar_t)`` (forward marginal ``x_t = sqrt(abar_t) x_0 + sigma_t eps``)
- ``btilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)`` (reverse posterior variance)
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Schedule:
    """Per-level tables of a VP diffusion, each of shape ``[T + 1]``."""

    beta: jnp.ndarray
    alpha: jnp.ndarray
    abar: jnp.ndarray
    sigma: jnp.ndarray
    btilde: jnp.ndarray

    @property
    def num_levels(self) -> int:
        """``T``, the number of noise levels above the data."""
        return self.beta.shape[0] - 1


def _linear_betas(num_levels: int) -> np.ndarray:
    # DDPM's 1e-4..0.02 range is for T=1000; rescale so that the total noise
    # (and hence abar_T ~ 0) is the same for any T, as improved-DDPM does.
    # Below T = 20 the top betas would reach 1; clip them like the cosine schedule.
    scale = 1000.0 / num_levels
    betas = np.linspace(scale * 1e-4, scale * 0.02, num_levels, dtype=np.float64)
    return np.minimum(betas, 0.999)


def _cosine_betas(num_levels: int, offset: float = 0.008) -> np.ndarray:
    steps = np.arange(num_levels + 1, dtype=np.float64) / num_levels
    f = np.cos((steps + offset) / (1 + offset) * np.pi / 2) ** 2
    abar = f / f[0]
    return np.clip(1.0 - abar[1:] / abar[:-1], 0.0, 0.999)


_BETAS: dict[str, Callable[[int], np.ndarray]] = {
    "linear": _linear_betas,
    "cosine": _cosine_betas,
}


def names() -> list[str]:
    return sorted(_BETAS)


def from_betas(betas: np.ndarray) -> Schedule:
    """Builds every table from ``beta_1..beta_T`` (computed in float64)."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"betas must be a non-empty vector, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas < 1)):
        raise ValueError("every beta_t must lie in (0, 1)")
    beta = np.concatenate([[0.0], betas])
    alpha = 1.0 - beta
    abar = np.cumprod(alpha)
    sigma = np.sqrt(1.0 - abar)
    if np.float32(abar[-1]) == 0:
        level = int(np.argmax(abar.astype(np.float32) == 0))
        raise ValueError(f"this schedule's abar_t underflows to 0 in float32 at level {level} "
                         f"of {betas.size}: use more levels or smaller betas")
    btilde = np.zeros_like(beta)
    btilde[1:] = beta[1:] * (1.0 - abar[:-1]) / (1.0 - abar[1:])
    as_f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
    return Schedule(
        beta=as_f32(beta),
        alpha=as_f32(alpha),
        abar=as_f32(abar),
        sigma=as_f32(sigma),
        btilde=as_f32(btilde),
    )


def get(name: str, num_levels: int) -> Schedule:
    """Looks a schedule up by name: ``get("linear", 100)``."""
    if name not in _BETAS:
        raise ValueError(f"unknown schedule {name!r}; known: {names()}")
    if int(num_levels) != num_levels or num_levels < 1:
        raise ValueError(f"num_levels must be a positive integer, got {num_levels!r}")
    return from_betas(_BETAS[name](int(num_levels)))
