"""Trajectory densities composed from chunk models, state wells, and respaced levels.

A trajectory ``tau`` of ``H`` rows of ``r`` numbers (``r = 6`` in the maze: position,
velocity, force; :mod:`compdiff.maze`) is a flat vector of ``R^{H r}``; rows ``a..b-1``
are the slice ``tau[a:b]``.

Chunk product (Du & Kaelbling 2024, Fig. 5: ``p(tau) ∝ prod_i p(s_i | s_{i-1}, a)``, here
with chunks of ``L`` rows). One chunk model ``q`` over ``R^{L r}``, shared by every chunk
position and conditioned on nothing (trained on every ``L``-row window of the episodes), is
applied at the windows starting at ``0, S, 2S, ..., H - L`` (stride ``S``):

    log p_t(tau) = sum_i w_i log q_t(tau[iS : iS + L]),
    score_t(tau) = sum_i w_i P_i^T score^q_t(tau[iS : iS + L]),

``P_i`` the selection of window ``i``'s coordinates (the score of each chunk is added back on
its own slice). At every level ``t`` each slice of the noised trajectory is a noised chunk,
so the factors are the chunk model's own level-``t`` marginals, as in every product of
diffusion models. Overlaps: with ``S < L`` the rows shared by two windows enter two factors.
:func:`chunk_product` takes the product as the paper does (every ``w_i = 1``): the shared
rows are counted twice, which at high noise halves their variance (each factor there is
close to ``N(0, I)``) and at level 0 asks both chunks to agree on them. :func:`junction`
counts every row once instead: for a Markov chain of rows and overlaps of at least one row,

    p(tau) = prod_i q(C_i) / prod_i o(O_i),    O_i = C_i ∩ C_{i+1} (L - S rows),

is exact at level 0 (the junction-tree factorization), with ``o`` a model of ``(L - S)``-row
windows; it is a weighted product with weights ``+1`` and ``-1`` (the algebra's negation).

Wells (:class:`Well`): a start or goal energy, a Gaussian ``N(tau[c]; m, s^2 I)`` of some
coordinates ``c`` at level 0, diffused exactly like the data it constrains
(``tau_t = sqrt(abar_t) tau_0 + sigma_t eps``):

    log r_t(tau) = log N(tau[c]; sqrt(abar_t) m, (abar_t s^2 + sigma_t^2) I).

The target ``m`` is one vector ``[k]`` or one per chain ``[B, k]``; per-chain targets are
for samplers without resampling (SMC would move a chain's state under another chain's
target).

Respacing (:func:`respace`, :class:`Respaced`): a model trained on ``T`` levels is exact at
any subset of them, so a ``T_c``-level schedule of levels ``m_j = round(j T / T_c)`` has
``abar^c_j = abar_{m_j}`` (betas ``1 - abar^c_j / abar^c_{j-1}``), and the density at coarse
level ``j`` is the fine one at ``m_j``. One model then serves annealed MCMC on ``T_c`` levels
with ``K`` gradients per level and reverse diffusion on all ``T = T_c (1 + K)`` levels at
the same number of function evaluations.
"""

from __future__ import annotations

import math

import flax.struct
import jax.numpy as jnp
import numpy as np

from compdiff import compose, schedules
from compdiff.compose import Density
from compdiff.schedules import Schedule

Array = jnp.ndarray


def window_starts(horizon: int, length: int, stride: int) -> tuple[int, ...]:
    """``0, S, ..., H - L``; a ValueError unless the windows cover every row exactly so."""
    if not (1 <= length <= horizon and 1 <= stride <= length):
        raise ValueError(f"need 1 <= chunk length ({length}) <= horizon ({horizon}) and "
                         f"1 <= stride ({stride}) <= length")
    if (horizon - length) % stride:
        raise ValueError(f"windows of {length} rows at stride {stride} do not end at row "
                         f"{horizon}: horizon - length must be a multiple of the stride")
    return tuple(range(0, horizon - length + 1, stride))


@flax.struct.dataclass
class ChunkProduct(Density):
    """``log p_t(tau) = sum_i w_i log q_t(tau[s_i : s_i + L])`` (module docstring)."""

    model: Density
    weights: Array  # [n]
    starts: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
    length: int = flax.struct.field(pytree_node=False, default=1)
    row: int = flax.struct.field(pytree_node=False, default=1)
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=False)
    name: str = flax.struct.field(pytree_node=False, default="chunks")

    @property
    def index(self) -> np.ndarray:
        """``[n, L r]`` flat coordinates of each window."""
        width = self.length * self.row
        return np.asarray([np.arange(s * self.row, s * self.row + width) for s in self.starts])

    def _windows(self, x: Array, t: Array) -> tuple[Array, Array]:
        n = len(self.starts)
        w = x[:, self.index].reshape(x.shape[0] * n, -1)
        t = jnp.asarray(t, jnp.int32)
        return w, (t if t.ndim == 0 else jnp.repeat(t, n))

    def _gather(self, part: Array, batch: int) -> Array:
        return jnp.sum(part.reshape(batch, -1) * self.weights, -1)

    def _scatter(self, score: Array, x: Array) -> Array:
        parts = score.reshape(x.shape[0], len(self.starts), -1) * self.weights[:, None]
        return jnp.zeros_like(x).at[:, self.index].add(parts)

    def log_prob(self, x: Array, t: Array) -> Array:
        self.require_log_prob("ChunkProduct.log_prob")
        return self._gather(self.model.log_prob(*self._windows(x, t)), x.shape[0])

    def score(self, x: Array, t: Array) -> Array:
        return self._scatter(self.model.score(*self._windows(x, t)), x)

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        self.require_log_prob("ChunkProduct.log_prob_and_score")
        log_p, score = self.model.log_prob_and_score(*self._windows(x, t))
        return self._gather(log_p, x.shape[0]), self._scatter(score, x)

    def describe(self) -> str:
        return f"{self.name}[{self.model.describe()} x {len(self.starts)}]"


def chunk_product(model: Density, horizon: int, length: int, stride: int, row: int,
                  weights: float | np.ndarray = 1.0, starts: tuple[int, ...] | None = None,
                  name: str = "chunks") -> ChunkProduct:
    """The chunk model ``model`` (over ``R^{length row}``) at every window of
    :func:`window_starts` (or at ``starts``), weight ``weights`` each."""
    if model.dim != length * row:
        raise ValueError(f"the chunk model has dim {model.dim}, but chunks of {length} rows of "
                         f"{row} numbers have {length * row}")
    starts = window_starts(horizon, length, stride) if starts is None else tuple(starts)
    if not starts or min(starts) < 0 or max(starts) + length > horizon:
        raise ValueError(f"window starts {starts} do not fit {horizon} rows")
    w = np.broadcast_to(np.asarray(weights, np.float32), (len(starts),))
    return ChunkProduct(model=model, weights=jnp.asarray(w), starts=starts, length=length,
                        row=row, dim=horizon * row, has_log_prob=model.has_log_prob, name=name)


def junction(chunk_model: Density, overlap_model: Density, horizon: int, length: int,
             stride: int, row: int) -> compose.Product:
    """``prod_i q(C_i) / prod_i o(C_i ∩ C_{i+1})``: every row counted once (module docstring)."""
    if stride >= length:
        raise ValueError(f"windows at stride {stride} >= length {length} do not overlap: use "
                         "chunk_product")
    starts = window_starts(horizon, length, stride)
    chunks = chunk_product(chunk_model, horizon, length, stride, row)
    overlaps = chunk_product(overlap_model, horizon, length - stride, stride, row,
                             starts=tuple(s + stride for s in starts[:-1]), name="overlaps")
    return compose.product([chunks, overlaps], [1.0, -1.0])


@flax.struct.dataclass
class Well(Density):
    """``log N(tau[c]; sqrt(abar_t) m, (abar_t s^2 + sigma_t^2) I)`` (module docstring)."""

    target: Array  # [k] or [B, k]
    schedule: Schedule
    coords: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
    std: float = flax.struct.field(pytree_node=False, default=1.0)
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)
    name: str = flax.struct.field(pytree_node=False, default="well")

    def log_prob(self, x: Array, t: Array) -> Array:
        t = jnp.asarray(t, jnp.int32)
        abar = self.schedule.abar[t].reshape(-1, 1)
        var = abar * self.std ** 2 + self.schedule.sigma[t].reshape(-1, 1) ** 2
        diff = x[:, np.asarray(self.coords)] - jnp.sqrt(abar) * self.target
        k = len(self.coords)
        return -0.5 * jnp.sum(diff ** 2 / var, -1) - 0.5 * k * jnp.log(2 * math.pi * var[:, 0])

    def describe(self) -> str:
        return self.name


def well(target: np.ndarray, coords: tuple[int, ...] | np.ndarray, std: float,
         schedule: Schedule, dim: int, name: str = "well") -> Well:
    """A :class:`Well` on flat coordinates ``coords`` of ``R^dim``."""
    coords = tuple(int(c) for c in np.asarray(coords).ravel())
    target = jnp.asarray(target, jnp.float32)
    if target.shape[-1:] != (len(coords),) or target.ndim > 2:
        raise ValueError(f"a well on {len(coords)} coordinates needs a target [k] or [B, k] "
                         f"with k = {len(coords)}, got shape {target.shape}")
    if not coords or min(coords) < 0 or max(coords) >= dim:
        raise ValueError(f"well coordinates {coords} must lie in [0, {dim})")
    if not std > 0:
        raise ValueError(f"a well needs a positive std, got {std}")
    return Well(target=target, schedule=schedule, coords=coords, std=float(std), dim=dim,
                name=name)


def respace(schedule: Schedule, num_levels: int) -> tuple[Schedule, np.ndarray]:
    """``(coarse schedule, levels)``: ``levels[j] = round(j T / T_c)`` (``levels[0] = 0``)
    and the ``T_c``-level schedule with ``abar^c_j = abar_{levels[j]}``."""
    fine = schedule.num_levels
    if not 1 <= num_levels <= fine:
        raise ValueError(f"cannot respace {fine} levels to {num_levels}")
    levels = np.round(np.arange(num_levels + 1) * fine / num_levels).astype(np.int32)
    abar = np.asarray(schedule.abar, np.float64)[levels]
    return schedules.from_betas(1.0 - abar[1:] / abar[:-1]), levels


@flax.struct.dataclass
class Respaced(Density):
    """``inner`` at fine level ``levels[t]`` when asked for coarse level ``t``."""

    inner: Density
    levels: Array  # [T_c + 1] int32
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=False)

    def _fine(self, t: Array) -> Array:
        return self.levels[jnp.asarray(t, jnp.int32)]

    def log_prob(self, x: Array, t: Array) -> Array:
        return self.inner.log_prob(x, self._fine(t))

    def score(self, x: Array, t: Array) -> Array:
        return self.inner.score(x, self._fine(t))

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        return self.inner.log_prob_and_score(x, self._fine(t))

    def describe(self) -> str:
        return f"{self.inner.describe()}[respaced to {self.levels.shape[0] - 1} levels]"


def respaced(density: Density, levels: np.ndarray) -> Respaced:
    """``density`` read on the coarse levels of :func:`respace`."""
    return Respaced(inner=density, levels=jnp.asarray(levels, jnp.int32), dim=density.dim,
                    has_log_prob=density.has_log_prob)
