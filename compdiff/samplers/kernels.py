"""Transition kernels at one level of the annealed sampler (docs/design.md section 4).

A kernel moves a batch of chains one step towards the level-``t`` target
``pi_t``. Every kernel reads and returns a :class:`ChainState` that caches
``log pi_t(x)`` and ``grad log pi_t(x)`` at the current ``x``, so a step costs
exactly the gradient evaluations its proposal needs: ULA and MALA one, HMC
and U-HMC one per leapfrog step. Per step, with ``g = grad log pi``:

- ULA: ``x' = x + eta g(x) + sqrt(2 eta) xi``.
- MALA: the ULA proposal, accepted with
  ``log a = log pi(x') - log pi(x) + log q(x | x') - log q(x' | x)``,
  ``q(x' | x) = N(x'; x + eta g(x), 2 eta I)``.
- HMC with partial momentum refresh (Neal 1996; RRR appendix C.1), scalar
  mass ``M``: ``v <- gamma v + sqrt(1 - gamma^2) xi``, ``xi ~ N(0, M)``; ``L``
  leapfrog steps of size ``eps`` on ``H = -log pi(x) + |v|^2 / (2M)``; negate
  ``v'``; accept with ``min(1, exp(H(x, v) - H(x', v')))``; negate ``v`` again,
  so an accepted move keeps its momentum and a rejected one reverses it.
- U-HMC: HMC that always accepts.

The finiteness rule: a proposal whose position, momentum, log-density or
score is not finite (NaN, or a log-density of ``+inf``) is rejected, so a
diverging chain stays where it was instead of poisoning the batch. A state
whose log-density is ``-inf`` (zero density: :func:`evaluate_finite` puts a
non-finite evaluation there) accepts any finite proposal, so a chain can walk
out of a region its target does not support.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp

from compdiff.compose import Density

Array = jnp.ndarray


@flax.struct.dataclass
class ChainState:
    """Chains ``x`` [B, d], momenta ``v`` [B, d] and the level-t cache at ``x``."""

    x: Array
    v: Array
    log_prob: Array  # [B]; zeros for score-only targets
    grad: Array  # [B, d]


@flax.struct.dataclass
class LevelParams:
    """What a kernel needs to know about its level: ``t``, step size and mass."""

    t: Array
    step_size: Array
    mass: Array
    damping: Array
    leapfrog: int = flax.struct.field(pytree_node=False, default=1)


def evaluate(target: Density, x: Array, t: Array) -> tuple[Array, Array]:
    """``(log pi_t(x), grad log pi_t(x))``; the log-density is 0 for score-only targets."""
    if target.has_log_prob:
        return target.log_prob_and_score(x, t)
    return jnp.zeros(x.shape[:1], x.dtype), target.score(x, t)


def evaluate_finite(target: Density, x: Array, t: Array) -> tuple[Array, Array, Array]:
    """:func:`evaluate` under the finiteness rule: ``(log_prob, grad, ok)``.

    Where the log-density is NaN or ``+inf``, or the score is not finite, the
    state gets zero density (``log_prob = -inf``) and a zero score (so the next
    proposal is a plain random walk); ``ok`` [B] marks the states that were finite.
    """
    log_prob, grad = evaluate(target, x, t)
    ok = (~jnp.isnan(log_prob) & (log_prob < jnp.inf) & jnp.all(jnp.isfinite(grad), -1)
          & jnp.all(jnp.isfinite(x), -1))
    log_prob = jnp.where(ok, log_prob, -jnp.inf)
    return log_prob, jnp.where(ok[:, None], grad, 0.0), ok


def _finite_rows(*arrays: Array) -> Array:
    """[B] True where every entry of every ``[B]`` or ``[B, d]`` array is finite."""
    ok = True
    for a in arrays:
        ok = ok & (jnp.all(jnp.isfinite(a), axis=-1) if a.ndim > 1 else jnp.isfinite(a))
    return ok


def _sq(v: Array) -> Array:
    return jnp.sum(v * v, axis=-1)


def _accept(key: Array, log_accept: Array, proposal_ok: Array) -> tuple[Array, Array]:
    """Per-chain Metropolis test; proposals that are not ``proposal_ok`` are rejected.

    ``log_accept = +inf`` (a finite proposal from a zero-density state) accepts.
    """
    valid = proposal_ok & ~jnp.isnan(log_accept)
    log_accept = jnp.where(valid, jnp.minimum(log_accept, 0.0), -jnp.inf)
    accepted = jnp.log(jax.random.uniform(key, log_accept.shape)) < log_accept
    return accepted, jnp.exp(log_accept)


def _select(accepted: Array, new: ChainState, old: ChainState) -> ChainState:
    pick = lambda a, b: jnp.where(accepted.reshape(accepted.shape + (1,) * (a.ndim - 1)), a, b)
    return jax.tree_util.tree_map(pick, new, old)


def ula(target: Density, state: ChainState, key: Array, p: LevelParams):
    noise = jax.random.normal(key, state.x.shape, state.x.dtype)
    x = state.x + p.step_size * state.grad + jnp.sqrt(2 * p.step_size) * noise
    log_prob, grad = evaluate(target, x, p.t)
    return state.replace(x=x, log_prob=log_prob, grad=grad), jnp.ones(x.shape[:1])


def mala(target: Density, state: ChainState, key: Array, p: LevelParams):
    k_noise, k_accept = jax.random.split(key)
    eta = p.step_size
    noise = jax.random.normal(k_noise, state.x.shape, state.x.dtype)
    x = state.x + eta * state.grad + jnp.sqrt(2 * eta) * noise
    log_prob, grad = evaluate(target, x, p.t)
    # log q(a | b) = -|a - b - eta g(b)|^2 / (4 eta) + const
    log_q_forward = -_sq(x - state.x - eta * state.grad) / (4 * eta)
    log_q_backward = -_sq(state.x - x - eta * grad) / (4 * eta)
    log_accept = log_prob - state.log_prob + log_q_backward - log_q_forward
    accepted, prob = _accept(k_accept, log_accept, _finite_rows(x, log_prob, grad))
    return _select(accepted, state.replace(x=x, log_prob=log_prob, grad=grad), state), prob


def _leapfrog(target: Density, x: Array, v: Array, grad: Array, p: LevelParams):
    """``L`` leapfrog steps for ``H = -log pi(x) + |v|^2 / (2M)``, one gradient each."""

    def step(carry, _):
        x, v, grad, _ = carry
        v = v + 0.5 * p.step_size * grad
        x = x + p.step_size * v / p.mass
        log_prob, grad = evaluate(target, x, p.t)
        v = v + 0.5 * p.step_size * grad
        return (x, v, grad, log_prob), None

    init = (x, v, grad, jnp.zeros(x.shape[:1], x.dtype))
    (x, v, grad, log_prob), _ = jax.lax.scan(step, init, None, length=p.leapfrog)
    return x, v, grad, log_prob


def _hmc(target: Density, state: ChainState, key: Array, p: LevelParams, adjusted: bool):
    k_refresh, k_accept = jax.random.split(key)
    xi = jax.random.normal(k_refresh, state.v.shape, state.v.dtype) * jnp.sqrt(p.mass)
    v = p.damping * state.v + jnp.sqrt(1 - p.damping**2) * xi
    x, v_new, grad, log_prob = _leapfrog(target, state.x, v, state.grad, p)
    v_new = -v_new
    proposal = state.replace(x=x, v=v_new, log_prob=log_prob, grad=grad)
    current = state.replace(v=v)
    if adjusted:
        kinetic = lambda u: _sq(u) / (2 * p.mass)
        log_accept = (log_prob - kinetic(v_new)) - (state.log_prob - kinetic(v))
        accepted, prob = _accept(k_accept, log_accept, _finite_rows(x, v_new, log_prob, grad))
    else:
        accepted, prob = jnp.ones(x.shape[:1], bool), jnp.ones(x.shape[:1])
    new = _select(accepted, proposal, current)
    return new.replace(v=-new.v), prob


def hmc(target: Density, state: ChainState, key: Array, p: LevelParams):
    return _hmc(target, state, key, p, adjusted=True)


def uhmc(target: Density, state: ChainState, key: Array, p: LevelParams):
    return _hmc(target, state, key, p, adjusted=False)


def reverse_step(state: ChainState, key: Array, t: Array, schedule,
                 upper_variance: bool = False) -> Array:
    """Ancestral step from level ``t`` to ``t - 1`` using the cached score at level ``t``.

    ``x_{t-1} = (x_t - beta_t / sigma_t * eps_hat) / sqrt(alpha_t) + sqrt(btilde_t) z``
    with ``eps_hat = -sigma_t * score``, i.e. ``(x_t + beta_t score) / sqrt(alpha_t) + ...``.
    ``upper_variance`` takes DDPM's other variance, ``beta_t`` instead of ``btilde_t``: an
    SMC proposal needs it, since with ``btilde_t < beta_t / (2 alpha_t)`` (the lowest
    levels) the weight against the forward kernel has infinite variance (docs/smc.md).
    """
    noise = jax.random.normal(key, state.x.shape, state.x.dtype)
    mean = (state.x + schedule.beta[t] * state.grad) / jnp.sqrt(schedule.alpha[t])
    var = schedule.beta[t] if upper_variance else schedule.btilde[t]
    return mean + jnp.sqrt(var) * noise


Kernel = Callable[[Density, ChainState, Array, LevelParams], tuple[ChainState, Array]]
