"""Exact factorized targets: products of oracles at level 0, and products over coordinates.

The composition algebra (:mod:`compdiff.compose`) multiplies level-``t`` densities, and
``prod_i p_{i,t}`` is *not* the level-``t`` marginal of the level-0 product ``prod_i p_i``
(diffusion does not commute with products; it does with mixtures). A model trained on
samples of the product learns the latter. This module gives that data distribution exactly,
for the products of the 2D oracles, so composed and monolithic models can be scored against
the distribution the data came from.

1. A Gaussian mixture with diagonal covariances times a box ``B = prod_j [a_j, b_j]`` is,
   at level 0, the mixture truncated to ``B`` (a box is constant on its support):
   ``p(x) = sum_k w'_k TN_k(x)`` with ``w'_k ∝ w_k Z_k``,
   ``Z_k = prod_j (Phi(beta_kj) - Phi(alpha_kj))``, ``alpha = (a - mu) / s``,
   ``beta = (b - mu) / s`` (:class:`TruncatedMixture`). Under ``x_t = c x_0 + sigma eps``
   (``c = sqrt(abar_t)``) each truncated component diffuses, per dimension, to

       p_t(x_j) = N(x_j; c mu, c^2 s^2 + sigma^2) (Phi((b - m) / r) - Phi((a - m) / r)) / Z_kj

   with ``r^2 = s^2 sigma^2 / (c^2 s^2 + sigma^2)`` and
   ``m = (mu sigma^2 + c s^2 x_j) / (c^2 s^2 + sigma^2)``: the Gaussian posterior of
   ``x_0`` given ``x_t``, times the probability that it lies in ``[a, b]``. So the level-``t``
   density is exact (normalized) at every level, and level-0 samples are exact (a component
   by ``w'``, then a truncated normal per dimension).
2. Two Gaussian mixtures multiply to a Gaussian mixture (:func:`compdiff.oracles.gmm_product`)
   and two boxes to their intersection: :func:`exact_product` picks the rule.
3. :func:`sample` draws exact level-0 samples of a product or an equal-weight mixture of
   oracles (a mixture: a component uniformly, then its own exact sample).
4. :class:`CoordinateProduct`: independent densities on disjoint coordinate blocks,
   ``p(x) = prod_i p_i(x_{B_i})`` (a model of each axis, Du & Kaelbling Fig. 3). Diffusion
   acts on each coordinate alone, so here the product of the level-``t`` marginals *is* the
   level-``t`` marginal of the product: reverse diffusion of the parts samples it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from compdiff import compose, oracles
from compdiff.compose import Density
from compdiff.schedules import Schedule

Array = jnp.ndarray
_LOG_2PI = float(np.log(2 * np.pi))


@flax.struct.dataclass
class TruncatedMixture(Density):
    """``sum_k w_k N(means[k], diag stds[k]^2)`` restricted to the box ``[low, high]``,
    diffused exactly by ``schedule`` (module docstring, item 1)."""

    means: Array  # [K, d]
    stds: Array  # [K, d]
    log_weights: Array  # [K], the untruncated mixture's, normalized
    low: Array  # [d]
    high: Array  # [d]
    schedule: Schedule
    name: str = flax.struct.field(pytree_node=False, default="truncated")
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)

    def _log_masses(self) -> Array:
        """``log Z_k`` [K]: each component's mass inside the box."""
        upper = (self.high - self.means) / self.stds
        lower = (self.low - self.means) / self.stds
        return jnp.sum(oracles.log_ndtr_difference(upper, lower), axis=-1)

    def truncated_log_weights(self) -> Array:
        """``log w'_k`` [K], normalized: the components' weights inside the box."""
        return jax.nn.log_softmax(self.log_weights + self._log_masses())

    def log_prob(self, x: Array, t: Array) -> Array:
        c, sigma = jnp.sqrt(self.schedule.abar[t]), self.schedule.sigma[t]
        sigma = jnp.maximum(sigma, 1e-12)  # level 0: the box's indicator
        var_s = self.stds**2  # [K, d]
        var_t = c**2 * var_s + sigma**2
        xk = x[:, None, :]  # [B, 1, d]
        log_gauss = -0.5 * ((xk - c * self.means) ** 2 / var_t + jnp.log(var_t) + _LOG_2PI)
        post_mean = (self.means * sigma**2 + c * var_s * xk) / var_t
        post_std = jnp.sqrt(var_s) * sigma / jnp.sqrt(var_t)
        log_in_box = oracles.log_ndtr_difference((self.high - post_mean) / post_std,
                                                 (self.low - post_mean) / post_std)
        per_comp = jnp.sum(log_gauss + log_in_box, axis=-1)  # [B, K], still / Z_k
        log_norm = jax.nn.logsumexp(self.log_weights + self._log_masses())
        return jax.nn.logsumexp(self.log_weights + per_comp, axis=-1) - log_norm

    def sample(self, key: Array, num: int) -> Array:
        """Exact level-0 samples ``[num, d]`` (a component by ``w'``, then per dimension a
        truncated normal, ``scipy.stats.truncnorm``)."""
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
        log_w = np.asarray(self.truncated_log_weights(), np.float64)
        comp = rng.choice(len(log_w), size=num, p=np.exp(log_w) / np.exp(log_w).sum())
        mu = np.asarray(self.means, np.float64)[comp]
        s = np.asarray(self.stds, np.float64)[comp]
        low, high = np.asarray(self.low, np.float64), np.asarray(self.high, np.float64)
        x = stats.truncnorm.rvs((low - mu) / s, (high - mu) / s, loc=mu, scale=s,
                                random_state=rng)
        return jnp.asarray(np.clip(x, low, high), jnp.float32)

    def describe(self) -> str:
        return self.name


def gmm_times_box(gmm: oracles.GaussianMixture, box: oracles.Box,
                  name: str | None = None) -> TruncatedMixture:
    """The level-0 product ``gmm * box`` (normalized): the mixture truncated to the box.
    Needs diagonal covariances (the truncated normal factorizes per dimension)."""
    if gmm.dim != box.dim:
        raise ValueError(f"dimension mismatch: {gmm.name} has {gmm.dim}, {box.name} {box.dim}")
    covs = np.asarray(gmm.covs, np.float64)
    diag = np.diagonal(covs, axis1=1, axis2=2)
    if not np.allclose(covs, diag[:, :, None] * np.eye(gmm.dim)):
        raise ValueError(f"{gmm.name} * {box.name}: the exact truncated product needs "
                         "diagonal covariances")
    return TruncatedMixture(means=gmm.means, stds=jnp.asarray(np.sqrt(diag), jnp.float32),
                            log_weights=gmm.log_weights, low=box.low, high=box.high,
                            schedule=gmm.schedule, name=name or f"{gmm.name}*{box.name}",
                            dim=gmm.dim)


def exact_product(leaves: Sequence[Density]) -> Density:
    """The normalized level-0 product of two oracles as an oracle whose level-``t`` density
    is the exact diffusion of that product: Gaussian mixture x box (either order), two
    mixtures, or two boxes (their intersection). Any other pair is a ValueError."""
    if len(leaves) != 2:
        raise ValueError(f"exact_product takes 2 oracles, got {len(leaves)}")
    a, b = leaves
    gmm, box = oracles.GaussianMixture, oracles.Box
    if isinstance(a, gmm) and isinstance(b, box):
        return gmm_times_box(a, b)
    if isinstance(a, box) and isinstance(b, gmm):
        return gmm_times_box(b, a)
    if isinstance(a, gmm) and isinstance(b, gmm):
        return oracles.gmm_product(a, b)
    if isinstance(a, box) and isinstance(b, box):
        low, high = np.maximum(a.low, b.low), np.minimum(a.high, b.high)
        if np.any(high <= low):
            raise ValueError(f"{a.name} * {b.name}: the boxes do not overlap")
        return oracles.box(low, high, a.schedule, name=f"{a.name}*{b.name}")
    raise ValueError(f"no exact product rule for {type(a).__name__} x {type(b).__name__}; "
                     "known: GaussianMixture x Box, GaussianMixture x GaussianMixture, Box x Box")


def exact_composition(op: str, leaves: Sequence[Density]) -> Density:
    """The level-``t`` density of the data distribution ``op(leaves)`` at level 0: the exact
    product (:func:`exact_product`) or the equal-weight mixture (diffusion commutes with it)."""
    if op == "product":
        return exact_product(leaves)
    if op == "mixture":
        return compose.mixture(list(leaves))
    raise ValueError(f"no exact data distribution for composition op {op!r}; known: product, "
                     "mixture")


def sample(op: str, leaves: Sequence[Density], key: Array, num: int) -> np.ndarray:
    """``num`` exact level-0 samples ``[num, d]`` of ``op(leaves)`` (``product`` or the
    equal-weight ``mixture``), as float32."""
    if op == "product":
        return np.asarray(exact_product(leaves).sample(key, num), np.float32)
    if op != "mixture":
        raise ValueError(f"cannot sample composition op {op!r}; known: product, mixture")
    k_pick, k_perm = jax.random.split(jax.random.fold_in(key, len(leaves)))
    pick = np.asarray(jax.random.randint(k_pick, (num,), 0, len(leaves)))
    parts = [np.asarray(leaf.sample(jax.random.fold_in(key, i), int(np.sum(pick == i))))
             for i, leaf in enumerate(leaves)]
    x = np.concatenate(parts).astype(np.float32)
    return x[np.asarray(jax.random.permutation(k_perm, num))]


@flax.struct.dataclass
class CoordinateProduct(Density):
    """``prod_i parts[i](x[:, block_i])`` over consecutive coordinate blocks (module
    docstring, item 4); block ``i`` has ``parts[i].dim`` coordinates."""

    parts: tuple
    sizes: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)

    def _blocks(self, x: Array) -> list[Array]:
        edges = np.cumsum((0,) + self.sizes)
        return [x[:, int(lo):int(hi)] for lo, hi in zip(edges[:-1], edges[1:])]

    def log_prob(self, x: Array, t: Array) -> Array:
        self.require_log_prob("log_prob")
        return sum(p.log_prob(xb, t) for p, xb in zip(self.parts, self._blocks(x)))

    def score(self, x: Array, t: Array) -> Array:
        return jnp.concatenate([p.score(xb, t) for p, xb in zip(self.parts, self._blocks(x))],
                               axis=-1)

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        self.require_log_prob("log_prob_and_score")
        pairs = [p.log_prob_and_score(xb, t) for p, xb in zip(self.parts, self._blocks(x))]
        return sum(lp for lp, _ in pairs), jnp.concatenate([g for _, g in pairs], axis=-1)

    def score_only_leaves(self) -> list[str]:
        return [leaf for p in self.parts for leaf in p.score_only_leaves()]

    def describe(self) -> str:
        return " x ".join(f"({p.describe()})" for p in self.parts)


def coordinate_product(parts: Sequence[Density]) -> CoordinateProduct:
    """The independent product of ``parts`` on consecutive coordinate blocks."""
    if not parts:
        raise ValueError("coordinate_product needs at least one part")
    sizes = tuple(int(p.dim) for p in parts)
    return CoordinateProduct(parts=tuple(parts), sizes=sizes, dim=sum(sizes),
                             has_log_prob=all(p.has_log_prob for p in parts))


def restrict(density: oracles.GaussianMixture, low: Sequence[float], high: Sequence[float],
             name: str = "slice") -> TruncatedMixture:
    """``density`` (diagonal covariances) restricted to the box ``[low, high]``: a slice of it."""
    return gmm_times_box(density, oracles.box(low, high, density.schedule), name=name)
