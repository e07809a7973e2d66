"""The annealed driver: one ``lax.scan`` over levels ``t = T..1`` (DESIGN section 4).

Chains start at ``x_T ~ N(0, I)``. Entering level ``t`` the driver
optionally takes one reverse-diffusion step from ``t + 1`` (the ``reverse``
sampler does only this), refreshes the cached ``log pi_t`` and its gradient
(one evaluation, whose score the next reverse step reuses), then runs an
inner scan of ``K`` kernel steps targeting ``pi_t``. Samples come out at
level 1, the least-noised level a diffusion model defines; ``denoise=True``
adds the final mean step to level 0.

Annealed importance weights (Neal 2001) accumulate for free when the target
has a log-density: ``log w = log pi_T(x_T) - log N(x_T; 0, I) +
sum_t [log pi_{t-1}(x) - log pi_t(x)]`` evaluated where the chain stands when
the level changes. They are unbiased only for ``pi_t``-invariant kernels
(MALA, HMC) without reverse steps; :func:`sample` returns ``None`` otherwise.

Chains are independent, so the batch is sharded over every device along one
mesh axis and no collectives are needed except the acceptance means. The
random stream is a function of the key and the level/step only
(``fold_in``), and JAX's partitionable threefry makes sharded random draws
equal to unsharded ones, so results do not depend on the device count.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from compdiff.compose import Density
from compdiff.samplers import kernels
from compdiff.samplers.registry import Sampler, StepRule
from compdiff.schedules import Schedule

Array = jnp.ndarray
CHAINS = "chains"


@flax.struct.dataclass
class SampleStats:
    """``accept[t - 1]``: mean acceptance probability at level ``t`` (NaN where no
    kernel runs); ``log_weights`` [num] or ``None``; ``nfe``: gradient evaluations per chain."""

    accept: Array
    log_weights: Array | None
    nfe: int = flax.struct.field(pytree_node=False, default=0)


def _level_tables(sampler: Sampler, schedule: Schedule, step_scale: Array):
    """Step sizes and masses indexed by level ``0..T+1`` (``T+1`` repeats ``T``: the prior)."""
    beta = jnp.concatenate([schedule.beta, schedule.beta[-1:]])
    step = step_scale * beta**sampler.step.b
    mass = sampler.mass.c * beta**sampler.mass.p
    return step, mass


def effective_sample_size(log_w: Array) -> Array:
    """``(sum w)^2 / sum w^2`` of unnormalized log-weights."""
    return jnp.exp(2 * jax.nn.logsumexp(log_w) - jax.nn.logsumexp(2 * log_w))


def _maybe_resample(state: kernels.ChainState, log_w: Array, key: Array, threshold: float,
                    force: Array, constrain):
    """Systematic resampling when the ESS drops below ``threshold * num``.

    Resampled chains carry the mean weight, so ``logmeanexp(log_w)`` stays an
    estimate of the log normalizer ratio.
    """
    num = log_w.shape[0]
    cdf = jnp.cumsum(jax.nn.softmax(log_w))
    positions = (jax.random.uniform(key) + jnp.arange(num)) / num
    idx = jnp.minimum(jnp.searchsorted(cdf, positions), num - 1)
    resampled = jax.tree_util.tree_map(lambda a: constrain(a[idx]), state)
    log_mean = jax.nn.logsumexp(log_w) - jnp.log(num)
    do = force | (effective_sample_size(log_w) < threshold * num)
    state = jax.tree_util.tree_map(lambda a, b: jnp.where(do, a, b), resampled, state)
    return state, jnp.where(do, jnp.full_like(log_w, log_mean), log_w)


def _run(target: Density, schedule: Schedule, key: Array, step_scale: Array, *,
         sampler: Sampler, num: int, denoise: bool, mesh: Mesh | None):
    constrain = (lambda a: a) if mesh is None else partial(
        jax.lax.with_sharding_constraint, shardings=NamedSharding(mesh, PartitionSpec(CHAINS)))
    num_levels = schedule.num_levels
    step, mass = _level_tables(sampler, schedule, step_scale)
    kernel, reverse = sampler.spec.kernel, sampler.name == "reverse" or sampler.reverse_first

    k_x, k_v = jax.random.split(jax.random.fold_in(key, 0))
    x = constrain(jax.random.normal(k_x, (num, target.dim)))
    v = constrain(jax.random.normal(k_v, (num, target.dim)) * jnp.sqrt(mass[num_levels]))
    # The cache starts as the N(0, I) reference "level T + 1", so entering
    # level T is an ordinary level change for the importance weights.
    log_ref = -0.5 * jnp.sum(x * x, -1) - 0.5 * target.dim * math.log(2 * math.pi)
    state = kernels.ChainState(x=x, v=v, log_prob=log_ref, grad=-x)

    def level(carry, t):
        state, log_w = carry
        level_key = jax.random.fold_in(key, t)
        x = state.x
        if reverse:
            stepped = kernels.reverse_step(state, jax.random.fold_in(level_key, 1 << 20),
                                           jnp.minimum(t + 1, num_levels), schedule)
            x = jnp.where(t < num_levels, stepped, x)
        log_prob, grad = kernels.evaluate(target, x, t)
        log_w = log_w + log_prob - state.log_prob
        state = kernels.ChainState(x=x, v=state.v * jnp.sqrt(mass[t] / mass[t + 1]),
                                   log_prob=log_prob, grad=grad)
        if sampler.resample_ess > 0:
            # Always resample entering level 1, so the returned (unweighted)
            # chains carry the weights; its kernel steps then spread duplicates.
            force = t == 1
            state, log_w = _maybe_resample(state, log_w, jax.random.fold_in(level_key, 1 << 21),
                                           sampler.resample_ess, force, constrain)
        if kernel is None:
            return (state, log_w), jnp.nan
        params = kernels.LevelParams(t=t, step_size=step[t], mass=mass[t],
                                     damping=jnp.float32(sampler.damping),
                                     leapfrog=sampler.leapfrog)

        def kernel_step(state, k):
            state, prob = kernel(target, state, jax.random.fold_in(level_key, k), params)
            state = jax.tree_util.tree_map(constrain, state)
            return state, jnp.mean(prob)

        state, probs = jax.lax.scan(kernel_step, state, jnp.arange(sampler.steps_per_level))
        return (state, log_w), jnp.mean(probs)

    levels = jnp.arange(num_levels, 0, -1)
    (state, log_w), accept = jax.lax.scan(level, (state, jnp.zeros(num)), levels)
    x = state.x
    if denoise:
        x = kernels.reverse_step(state, jax.random.fold_in(key, 0), jnp.int32(1), schedule)
    return x, accept[::-1], log_w


_run_jit = jax.jit(_run, static_argnames=("sampler", "num", "denoise", "mesh"))


def chain_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all) whose axis shards the chains."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (CHAINS,))


def _validate(target: Density, sampler: Sampler, schedule: Schedule, num: int,
              mesh: Mesh | None) -> None:
    if not isinstance(target, Density):
        raise TypeError(f"target must be a compdiff Density, got {type(target).__name__}")
    for leaf in jax.tree_util.tree_leaves(target):
        if isinstance(leaf, Density):
            raise TypeError(f"{leaf.describe()} ({type(leaf).__name__}) is not a pytree, so the "
                            "composition cannot pass through jit; declare it with "
                            "@flax.struct.dataclass, marking non-array fields "
                            "flax.struct.field(pytree_node=False)")
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must come from samplers.get(...), got {type(sampler).__name__}")
    if sampler.spec.needs_log_prob:
        target.require_log_prob(f"the Metropolis-adjusted sampler {sampler.name!r}")
    if sampler.resample_ess > 0:
        target.require_log_prob("resampling by annealed importance weights")
        if sampler.reverse_first or sampler.spec.kernel is None:
            raise ValueError("resampling needs importance weights, which reverse steps do not "
                             "have; use resample_ess=0 with reverse steps")
    step, mass = (np.asarray(a) for a in _level_tables(sampler, schedule, sampler.step.a))
    if not (np.all(np.isfinite(step[1:])) and np.all(step[1:] > 0)):
        raise ValueError(f"sampler {sampler.name!r}: step sizes must be finite and positive, "
                         f"got a={sampler.step.a}, b={sampler.step.b} -> range "
                         f"[{step[1:].min()}, {step[1:].max()}]")
    if not (np.all(np.isfinite(mass[1:])) and np.all(mass[1:] > 0)):
        raise ValueError(f"sampler {sampler.name!r}: masses must be finite and positive")
    if num < 1:
        raise ValueError(f"num must be positive, got {num}")
    if mesh is not None and num % mesh.size:
        raise ValueError(f"num={num} chains cannot be split evenly over {mesh.size} devices; "
                         f"use a multiple of {mesh.size}")


def sample(target: Density, sampler: Sampler, schedule: Schedule, key: Array, num: int, *,
           denoise: bool = False, mesh: Mesh | None | str = "auto") -> tuple[Array, SampleStats]:
    """Draws ``num`` samples ``[num, dim]`` from ``target`` at level 1 (level 0 if ``denoise``).

    ``mesh="auto"`` shards the chains over all devices when there are several;
    pass ``None`` to keep them on one device or a :func:`chain_mesh` of your own.
    """
    if mesh == "auto":
        mesh = chain_mesh() if jax.device_count() > 1 else None
    _validate(target, sampler, schedule, num, mesh)
    x, accept, log_w = _run_jit(target, schedule, key, jnp.float32(sampler.step.a),
                                sampler=sampler, num=num, denoise=denoise, mesh=mesh)
    weights_valid = (target.has_log_prob and sampler.spec.needs_log_prob
                     and not sampler.reverse_first)
    return x, SampleStats(accept=accept, log_weights=log_w if weights_valid else None,
                          nfe=sampler.nfe(schedule.num_levels))


@partial(jax.jit, static_argnames=("sampler", "num_steps"))
def _run_chain(target, x, v, key, t, step_size, mass, *, sampler, num_steps):
    log_prob, grad = kernels.evaluate(target, x, t)
    state = kernels.ChainState(x=x, v=v, log_prob=log_prob, grad=grad)
    params = kernels.LevelParams(t=t, step_size=step_size, mass=mass,
                                 damping=jnp.float32(sampler.damping), leapfrog=sampler.leapfrog)

    def step(state, i):
        state, prob = sampler.spec.kernel(target, state, jax.random.fold_in(key, i), params)
        return state, jnp.mean(prob)

    state, probs = jax.lax.scan(step, state, jnp.arange(num_steps))
    return state.x, jnp.mean(probs)


def run_chain(target: Density, sampler: Sampler, schedule: Schedule, t: int, x: Array,
              key: Array, num_steps: int) -> tuple[Array, Array]:
    """Runs ``num_steps`` kernel steps at the fixed level ``t`` from ``x`` [B, d].

    Returns the final states and the mean acceptance probability. The step
    size and mass are the sampler's level-``t`` values; momenta start fresh.
    """
    if sampler.spec.kernel is None:
        raise ValueError("the 'reverse' sampler has no kernel to run at a fixed level")
    _validate(target, sampler, schedule, x.shape[0], None)
    step, mass = _level_tables(sampler, schedule, jnp.float32(sampler.step.a))
    v = jax.random.normal(jax.random.fold_in(key, 2**31 - 1), x.shape) * jnp.sqrt(mass[t])
    return _run_chain(target, x, v, key, jnp.int32(t), step[t], mass[t], sampler=sampler,
                      num_steps=num_steps)


def tune_step(target: Density, sampler: Sampler, schedule: Schedule, key: Array,
              target_accept: float, *, num: int = 256, iters: int = 12,
              low_noise_fraction: float = 0.1) -> Sampler:
    """Warm-up: returns ``sampler`` with ``step.a`` set so the acceptance at the
    low-noise levels is close to ``target_accept`` (RRR: ~0.6 MALA, ~0.7 HMC).

    The criterion is the mean acceptance over the ``low_noise_fraction`` of
    levels nearest the data. The mean over *all* levels is dominated by the
    easy high-noise levels and picks steps whose acceptance at level 1, where
    the samples are formed, is near zero.

    Acceptance falls as the step grows, so the search brackets ``a`` by
    factors of 4 and then bisects in log space on short pilot runs; the pilot
    runs are compiled once because ``a`` enters them as data.
    """
    if not sampler.spec.needs_log_prob:
        raise ValueError(f"only Metropolis-adjusted samplers have an acceptance rate to tune; "
                         f"{sampler.name!r} has none")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
    if not 0.0 < low_noise_fraction <= 1.0:
        raise ValueError(f"low_noise_fraction must lie in (0, 1], got {low_noise_fraction}")
    _validate(target, sampler, schedule, num, None)
    tail = max(1, round(low_noise_fraction * schedule.num_levels))
    log_lo, log_hi, log_a = -np.inf, np.inf, math.log(sampler.step.a)
    for i in range(iters):
        _, accept, _ = _run_jit(target, schedule, jax.random.fold_in(key, i),
                                jnp.float32(math.exp(log_a)), sampler=sampler, num=num,
                                denoise=False, mesh=None)
        rate = float(jnp.mean(accept[:tail]))  # accept[t - 1] is level t
        if rate > target_accept:
            log_lo = log_a
        else:
            log_hi = log_a
        if np.isinf(log_hi):
            log_a += math.log(4.0)
        elif np.isinf(log_lo):
            log_a -= math.log(4.0)
        else:
            log_a = 0.5 * (log_lo + log_hi)
    return dataclasses.replace(sampler, step=StepRule(math.exp(log_a), sampler.step.b))
