"""Importance weights of the annealed driver and SMC resampling (docs/smc.md).

A run moves chains through the targets ``pi_{T+1} = reference, pi_T, ..., pi_1``.
The log-weight of a chain sums one increment per level change ``t + 1 -> t``:

- **Invariant kernels** (MALA, HMC, or none): the chain stays put when the
  level changes, so the increment is the annealed importance weight (Neal
  2001) ``log pi_t(x) - log pi_{t+1}(x)``.
- **The reverse-diffusion step as the proposal** ``x' ~ q(x' | x) =
  N(mu_{t+1}(x), btilde_{t+1} I)``, ``mu_{t+1}(x) = (x + beta_{t+1} grad log
  pi_{t+1}(x)) / sqrt(alpha_{t+1})``, with the forward kernel ``L(x | x') =
  N(x; sqrt(alpha_{t+1}) x', beta_{t+1} I)`` as the backward kernel, adds
  :func:`reverse_proposal_correction`, so the increment is
  ``log pi_t(x') - log pi_{t+1}(x) + log L(x | x') - log q(x' | x)``.
  Exact for any composition with a log-density; kernel moves after it must
  leave ``pi_t`` invariant. A resampling run proposes with DDPM's variance
  ``beta_{t+1}``, not ``btilde_{t+1}``: at the lowest levels ``btilde < beta /
  (2 alpha)``, where the weight's variance is infinite (one-step ESS 0.00
  entering level 1 of a 2D Gaussian product with ``btilde``).
- **Feynman-Kac correctors** (Skreta et al., ICML 2025) for score-only weighted
  products ``pi_t = prod_i p_{i,t} ** w_i``: :func:`fkc_increment`, a
  time-discretized approximation (the derivation is in docs/smc.md).

Resampling is systematic (:func:`resample`); the resampled chains carry the
mean weight, so ``logmeanexp(log w)`` stays an estimate of ``log Z_1``.
These few lines are written here rather than taken from a library because
they run inside the driver's ``lax.scan`` on sharded chain batches.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def finite_log_weights(log_w: Array) -> Array:
    """Non-finite log-weights (NaN, ``+inf``) become ``-inf``: zero weight."""
    return jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf)


def effective_sample_size(log_w: Array) -> Array:
    """``(sum w)^2 / sum w^2`` of unnormalized log-weights; 0 when every weight is zero."""
    log_w = finite_log_weights(log_w)
    lse = jax.nn.logsumexp(log_w)
    ess = jnp.exp(2 * lse - jax.nn.logsumexp(2 * log_w))
    return jnp.where(jnp.isfinite(lse), ess, 0.0)


def resample(state, log_w: Array, key: Array, threshold: float, force: Array, constrain,
             populations: int = 1):
    """Systematic resampling of the pytree ``state`` within each of ``populations``
    equal, contiguous blocks of chains, where that block's ESS drops below
    ``threshold * block size``.

    Blocks are independent SMC runs (one image's or one class's target each):
    a chain is only ever replaced by a chain of its own block. Returns
    ``(state, log_w, ess)``, ``ess`` [populations] measured before resampling;
    a block whose weights are all zero has ESS 0 and the caller raises.
    """
    num = log_w.shape[0]
    size = num // populations
    blocks = finite_log_weights(log_w).reshape(populations, size)
    ess = jax.vmap(effective_sample_size)(blocks)
    # Uniform when every weight is zero, so the indices stay defined until the caller raises.
    cdf = jnp.cumsum(jax.nn.softmax(jnp.where(ess[:, None] > 0, blocks, 0.0), axis=-1), -1)
    positions = (jax.random.uniform(key, (populations, 1)) + jnp.arange(size)) / size
    local = jnp.minimum(jax.vmap(jnp.searchsorted)(cdf, positions), size - 1)
    do = force | (ess < threshold * size)
    own = jnp.arange(num).reshape(populations, size)
    idx = jnp.where(do[:, None], local + own[:, :1], own).reshape(num)
    state = jax.tree_util.tree_map(lambda a: constrain(a[idx]), state)
    log_mean = jax.nn.logsumexp(blocks, -1, keepdims=True) - jnp.log(size)
    return state, jnp.where(do[:, None], log_mean, blocks).reshape(num), ess


def log_normal(x: Array, mean: Array, var: Array) -> Array:
    """``log N(x; mean, var I)`` per row of ``x`` [B, d]."""
    d = x.shape[-1]
    return -0.5 * jnp.sum((x - mean) ** 2, -1) / var - 0.5 * d * jnp.log(2 * math.pi * var)


def reverse_proposal_correction(x_from: Array, grad_from: Array, x_to: Array, t_from: Array,
                                schedule, upper_variance: bool = True) -> Array:
    """``log L(x | x') - log q(x' | x)`` for the reverse step ``x = x_from -> x' = x_to``.

    ``grad_from`` is ``grad log pi_{t_from}(x_from)``, the score the step used; the
    step's variance is ``beta`` (``upper_variance``, as SMC proposes) or ``btilde``.
    """
    alpha, beta = schedule.alpha[t_from], schedule.beta[t_from]
    mean = (x_from + beta * grad_from) / jnp.sqrt(alpha)
    var = beta if upper_variance else schedule.btilde[t_from]
    return log_normal(x_from, jnp.sqrt(alpha) * x_to, beta) - log_normal(x_to, mean, var)


def fkc_increment(child_scores: list[Array], weights: Array, beta: Array) -> Array:
    """``beta / 2 * (|sum_i w_i s_i|^2 - sum_i w_i |s_i|^2)`` [B], per chain.

    The Feynman-Kac weight of one reverse step of size ``beta`` for the weighted
    product ``prod_i p_i ** w_i`` from its factors' scores ``s_i`` at the chain
    (for two factors at weight 1: ``beta <s_1, s_2>``). Up to a constant shared
    by every chain, which resampling ignores.
    """
    total = sum(w * s for w, s in zip(weights, child_scores))
    own = sum(w * jnp.sum(s * s, -1) for w, s in zip(weights, child_scores))
    return 0.5 * beta * (jnp.sum(total * total, -1) - own)
