"""Analytic oracle models: exact diffused densities at every level (docs/design.md section 2).

Under the VP forward process ``x_t = sqrt(abar_t) x_0 + sigma_t eps``:

- a Gaussian mixture ``sum_k w_k N(mu_k, S_k)`` diffuses to
  ``sum_k w_k N(sqrt(abar_t) mu_k, abar_t S_k + sigma_t^2 I)``;
- a uniform box ``prod_j U[a_j, b_j]`` diffuses to the product over dimensions of
  ``(Phi((s b - x) / sigma) - Phi((s a - x) / sigma)) / (s (b - a))``, ``s = sqrt(abar_t)``,
  evaluated as a difference of ``log_ndtr`` terms so it stays finite far out in the tails.

Oracles are :class:`~compdiff.compose.Density` objects, so they plug in
wherever a trained model does, and sample level 0 exactly. They separate
sampler error from model error.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from compdiff import guidance
from compdiff.compose import Density
from compdiff.schedules import Schedule

Array = jnp.ndarray
_LOG_2PI = float(np.log(2 * np.pi))


@flax.struct.dataclass
class GaussianMixture(Density):
    """``sum_k w_k N(means[k], covs[k])`` diffused by ``schedule``."""

    means: Array  # [K, d]
    covs: Array  # [K, d, d]
    log_weights: Array  # [K], normalized
    schedule: Schedule
    name: str = flax.struct.field(pytree_node=False, default="gmm")
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)

    def _level_params(self, t: Array) -> tuple[Array, Array]:
        abar, sigma = self.schedule.abar[t], self.schedule.sigma[t]
        means = jnp.sqrt(abar) * self.means
        covs = abar * self.covs + sigma**2 * jnp.eye(self.dim)
        return means, covs

    def _components(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Per-component ``log w_k N(x; m_k, C_k)`` [B, K] and ``C_k^-1 (m_k - x)`` [B, K, d]."""
        means, covs = self._level_params(t)
        chol = jnp.linalg.cholesky(covs)  # [K, d, d]
        diff = means[None] - x[:, None]  # [B, K, d]
        solve = jax.vmap(lambda c, r: jax.scipy.linalg.cho_solve((c, True), r.T).T,
                         in_axes=(0, 1), out_axes=1)
        prec_diff = solve(chol, diff)
        log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
        maha = jnp.sum(diff * prec_diff, -1)
        log_comp = self.log_weights - 0.5 * (maha + log_det + self.dim * _LOG_2PI)
        return log_comp, prec_diff

    def log_prob(self, x: Array, t: Array) -> Array:
        return jax.nn.logsumexp(self._components(x, t)[0], axis=-1)

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        log_comp, prec_diff = self._components(x, t)
        resp = jax.nn.softmax(log_comp, axis=-1)
        return jax.nn.logsumexp(log_comp, -1), jnp.einsum("bk,bkd->bd", resp, prec_diff)

    def sample(self, key: Array, num: int) -> Array:
        """Exact level-0 samples ``[num, d]``."""
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.categorical(k_comp, self.log_weights, shape=(num,))
        chol = jnp.linalg.cholesky(self.covs)[comp]
        z = jax.random.normal(k_noise, (num, self.dim))
        return self.means[comp] + jnp.einsum("bij,bj->bi", chol, z)

    def at_level(self, t: int) -> GaussianMixture:
        """The level-``t`` marginal as a mixture in its own right (its level 0 is our level t)."""
        means, covs = self._level_params(t)
        return self.replace(means=means, covs=covs, name=f"{self.name}@{t}")

    def component_classifier(self) -> guidance.Classifier:
        """The exact posterior over components at every level, as a classifier.

        ``p_t(k | x) = w_k N_k,t(x) / sum_j w_j N_j,t(x)`` with ``N_k,t`` the
        diffused component: its logits are ``log w_k N_k,t(x)``. Guidance by it
        with scale 1, ``self * posterior(k)``, is ``w_k N_k,t`` at every level,
        the diffused component ``k`` itself, so reverse diffusion samples it
        exactly; with scale ``lam`` the level-``t`` target is
        ``p_t(x) p_t(k | x) ** lam``.
        """
        return guidance.Classifier(apply_fn=_component_logits, params=self,
                                   num_outputs=int(self.means.shape[0]), dim=self.dim,
                                   num_levels=self.schedule.num_levels,
                                   name=f"{self.name}.posterior")

    def component_posterior(self, k: int | Array) -> guidance.ClassTerm:
        """``log p_t(k | x)``, a term of the algebra (see :meth:`component_classifier`)."""
        return self.component_classifier().given(k)

    def describe(self) -> str:
        return self.name


def _component_logits(gmm: GaussianMixture, x: Array, t: Array, cond: None) -> Array:
    """``log w_k N(x; sqrt(abar_t) mu_k, abar_t S_k + sigma_t^2 I)`` [B, K]: exact logits."""
    if t.shape == (1,):
        return gmm._components(x, t[0])[0]
    return jax.vmap(lambda xi, ti: gmm._components(xi[None], ti)[0][0])(x, t)


def gaussian_mixture(means, stds, schedule: Schedule, weights=None,
                     name: str = "gmm") -> GaussianMixture:
    """A mixture of isotropic (``stds`` per component) or full-covariance Gaussians."""
    means = np.atleast_2d(np.asarray(means, np.float32))
    num, dim = means.shape
    stds = np.asarray(stds, np.float32)
    if stds.ndim <= 1:
        stds = np.broadcast_to(stds, (num,))
        covs = stds[:, None, None] ** 2 * np.eye(dim, dtype=np.float32)
    else:
        covs = stds
    if covs.shape != (num, dim, dim):
        raise ValueError(f"covariances must have shape {(num, dim, dim)}, got {covs.shape}")
    weights = np.full(num, 1.0 / num) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != (num,) or np.any(weights <= 0):
        raise ValueError(f"need {num} positive mixture weights, got {weights}")
    return GaussianMixture(means=jnp.asarray(means), covs=jnp.asarray(covs, jnp.float32),
                           log_weights=jnp.asarray(np.log(weights / weights.sum()), jnp.float32),
                           schedule=schedule, name=name, dim=dim)


def gmm_product(a: GaussianMixture, b: GaussianMixture, name: str | None = None) -> GaussianMixture:
    """The normalized product of two level-0 Gaussian mixtures, itself a Gaussian mixture.

    ``N(x; m1, S1) N(x; m2, S2) = N(m1; m2, S1 + S2) N(x; m, S)`` with
    ``S = (S1^-1 + S2^-1)^-1`` and ``m = S (S1^-1 m1 + S2^-1 m2)``, so pairs
    ``(i, j)`` become components weighted by ``w_i v_j N(m1_i; m2_j, S1_i + S2_j)``.
    """
    if a.dim != b.dim:
        raise ValueError(f"dimension mismatch: {a.dim} vs {b.dim}")
    m1, s1 = np.asarray(a.means, np.float64), np.asarray(a.covs, np.float64)
    m2, s2 = np.asarray(b.means, np.float64), np.asarray(b.covs, np.float64)
    p1, p2 = np.linalg.inv(s1), np.linalg.inv(s2)
    means, covs, log_w = [], [], []
    for i in range(len(m1)):
        for j in range(len(m2)):
            cov = np.linalg.inv(p1[i] + p2[j])
            means.append(cov @ (p1[i] @ m1[i] + p2[j] @ m2[j]))
            covs.append(cov)
            joint = s1[i] + s2[j]
            diff = m1[i] - m2[j]
            log_norm = -0.5 * (diff @ np.linalg.solve(joint, diff)
                               + np.linalg.slogdet(joint)[1] + a.dim * np.log(2 * np.pi))
            log_w.append(float(a.log_weights[i]) + float(b.log_weights[j]) + log_norm)
    log_w = np.asarray(log_w)
    weights = np.exp(log_w - log_w.max())
    return gaussian_mixture(np.stack(means), np.stack(covs), a.schedule, weights,
                            name or f"{a.name}*{b.name}")


def log_ndtr_difference(upper: Array, lower: Array) -> Array:
    """``log(Phi(upper) - Phi(lower))`` for ``upper > lower``, elementwise: reflected to the
    left tail, where ``log_ndtr`` keeps precision, whichever side of zero the pair lies on."""
    flip = (upper + lower) > 0
    hi = jnp.where(flip, -lower, upper)
    lo = jnp.where(flip, -upper, lower)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + jnp.log1p(-jnp.exp(jnp.minimum(log_lo - log_hi, -1e-30)))


@flax.struct.dataclass
class Box(Density):
    """Uniform density on the axis-aligned box ``prod_j [low_j, high_j]``, diffused."""

    low: Array  # [d]
    high: Array  # [d]
    schedule: Schedule
    name: str = flax.struct.field(pytree_node=False, default="box")
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)

    def _log_terms(self, x: Array, t: Array):
        s, sigma = jnp.sqrt(self.schedule.abar[t]), self.schedule.sigma[t]
        # Level 0 has sigma = 0; a tiny floor turns the Phi difference into the
        # indicator of the box, which is the level-0 density.
        sigma = jnp.maximum(sigma, 1e-12)
        upper = (s * self.high - x) / sigma
        lower = (s * self.low - x) / sigma
        return s, sigma, upper, lower, log_ndtr_difference(upper, lower)

    def log_prob(self, x: Array, t: Array) -> Array:
        s, _, _, _, log_mass = self._log_terms(x, t)
        return jnp.sum(log_mass - jnp.log(s * (self.high - self.low)), axis=-1)

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        s, sigma, upper, lower, log_mass = self._log_terms(x, t)
        log_phi = lambda u: -0.5 * u**2 - 0.5 * _LOG_2PI
        # d/dx log(Phi(u) - Phi(l)) = (phi(l) - phi(u)) / sigma / (Phi(u) - Phi(l))
        score = (jnp.exp(log_phi(lower) - log_mass) - jnp.exp(log_phi(upper) - log_mass)) / sigma
        log_p = jnp.sum(log_mass - jnp.log(s * (self.high - self.low)), axis=-1)
        return log_p, score

    def sample(self, key: Array, num: int) -> Array:
        """Exact level-0 samples ``[num, d]``."""
        u = jax.random.uniform(key, (num, self.dim))
        return self.low + u * (self.high - self.low)

    def describe(self) -> str:
        return self.name


def box(low, high, schedule: Schedule, name: str = "box") -> Box:
    low, high = np.asarray(low, np.float32).ravel(), np.asarray(high, np.float32).ravel()
    if low.shape != high.shape or np.any(high <= low):
        raise ValueError(f"box needs low < high per dimension, got low={low}, high={high}")
    return Box(low=jnp.asarray(low), high=jnp.asarray(high), schedule=schedule, name=name,
               dim=low.size)


def diffuse(key: Array, x0: Array, t: int, schedule: Schedule) -> Array:
    """Forward-process sample ``x_t = sqrt(abar_t) x_0 + sigma_t eps``."""
    eps = jax.random.normal(key, x0.shape)
    return jnp.sqrt(schedule.abar[t]) * x0 + schedule.sigma[t] * eps
