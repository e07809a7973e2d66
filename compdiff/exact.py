"""Exact targets for compositions of 2D oracles, normalized numerically on a grid.

A composition of oracles has an exact *unnormalized* log-density at every
level; only its normalizer ``Z`` is unknown. On a fine grid covering the
mass, ``log Z = logsumexp(log pi(grid)) + log(cell area)`` (midpoint rule), so
``log pi(x) - log Z`` is the exact normalized log-density at any point and
exact samples come from picking cells by mass and jittering uniformly within
a cell (error below the cell width, which is kept far below the data scale).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from compdiff.compose import Density

Array = jnp.ndarray


@flax.struct.dataclass
class GridTarget:
    """A level-``t`` density tabulated on a regular 2D grid, with its normalizer."""

    density: Density
    t: int = flax.struct.field(pytree_node=False)
    lows: tuple[float, float] = flax.struct.field(pytree_node=False)
    cell: tuple[float, float] = flax.struct.field(pytree_node=False)
    log_mass: Array  # [n, n] log probability of each cell
    log_norm: float = flax.struct.field(pytree_node=False)

    def log_prob(self, x: Array) -> Array:
        """Exact normalized ``log pi_t(x)`` [B]."""
        return self.density.log_prob(x, self.t) - self.log_norm

    def sample(self, key: Array, num: int) -> Array:
        k_cell, k_jitter = jax.random.split(key)
        n = self.log_mass.shape[1]
        # Inverse-CDF draw: categorical() would materialize [num, cells] Gumbels.
        cdf = jnp.cumsum(jnp.exp(self.log_mass.ravel()))
        u_cell = jax.random.uniform(k_cell, (num,)) * cdf[-1]
        idx = jnp.minimum(jnp.searchsorted(cdf, u_cell), cdf.shape[0] - 1)
        ij = jnp.stack([idx // n, idx % n], -1).astype(jnp.float32)
        u = jax.random.uniform(k_jitter, (num, 2))
        return jnp.asarray(self.lows) + (ij + u) * jnp.asarray(self.cell)


# Module-level (the level is data), so tabulating the same composition again, or at another
# level, reuses the compiled program instead of tracing a new lambda per call.
_log_prob = jax.jit(lambda density, x, t: density.log_prob(x, t))


def on_grid(density: Density, t: int = 1, *, extent: float = 1.5, size: int = 600,
            chunk: int = 40_000) -> GridTarget:
    """Tabulates ``density`` at level ``t`` on ``[-extent, extent]^2`` with ``size^2`` cells."""
    if density.dim != 2:
        raise ValueError(f"grid normalization is for 2D densities, got dim {density.dim}")
    if not density.has_log_prob:
        density.require_log_prob("an exact grid target")
    edges = np.linspace(-extent, extent, size + 1)
    centers = 0.5 * (edges[1:] + edges[:-1])
    gx, gy = np.meshgrid(centers, centers, indexing="ij")
    points = np.stack([gx.ravel(), gy.ravel()], -1).astype(np.float32)
    level = jnp.int32(t)
    values = np.concatenate([np.asarray(_log_prob(density, points[i:i + chunk], level))
                             for i in range(0, len(points), chunk)])
    cell = float(edges[1] - edges[0])
    log_cell_mass = values + 2 * np.log(cell)
    log_norm = float(jax.nn.logsumexp(log_cell_mass))
    return GridTarget(density=density, t=t, lows=(-extent, -extent), cell=(cell, cell),
                      log_mass=jnp.asarray((log_cell_mass - log_norm).reshape(size, size)),
                      log_norm=log_norm)
