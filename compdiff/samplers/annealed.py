"""The annealed driver: one ``lax.scan`` over levels ``t = T..1`` (docs/design.md section 4).

Chains start at ``x_T ~ N(0, I)``. Entering level ``t`` the driver
optionally takes one reverse-diffusion step from ``t + 1`` (the ``reverse``
sampler does only this), refreshes the cached ``log pi_t`` and its gradient
(one evaluation, whose score the next reverse step reuses), then runs an
inner scan of ``K`` kernel steps targeting ``pi_t``. Samples come out at
level 0 by default: the final mean step from level 1 (``btilde_1 = 0``), as
reverse diffusion ends; ``denoise=False`` returns the level-1 chains, whose
target ``pi_1`` the importance weights refer to.

Annealed importance weights (Neal 2001) accumulate for free when the target
has a log-density: ``log w = log pi_T(x_T) - log N(x_T; 0, I) +
sum_t [log pi_{t-1}(x) - log pi_t(x)]`` evaluated where the chain stands when
the level changes. They are unbiased only for ``pi_t``-invariant kernels
(MALA, HMC, or none); a reverse step into a level is then an SMC proposal
whose exact correction the driver adds (``samplers/weights.py``, derived in
docs/smc.md). :func:`sample` returns ``None`` for unadjusted kernels.
The evaluation on entering a level follows the kernels' finiteness rule
(:func:`kernels.evaluate_finite`): a chain whose log-density there is NaN or
``+inf`` gets zero weight, and a weight that is not finite counts as zero, so
such a chain is never chosen by resampling. ``logmeanexp(log w)`` estimates
``log Z_1``, the log-normalizer of the unnormalized level-1 target (the
reference is normalized).

Health. Per level the driver counts chains that are not finite and chains
that escaped (a coordinate beyond ``escape``: the prior has unit scale, so a
finite chain far outside it has diverged), and the effective sample size of
the weights on entering the level; :func:`sample` logs one warning line when
any chain diverged.

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
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from compdiff import compose
from compdiff.compose import Density
from compdiff.samplers import equal_cost, kernels, weights
from compdiff.samplers.registry import ADAPT_RATE, Sampler, StepRule
from compdiff.schedules import Schedule

Array = jnp.ndarray
CHAINS = "chains"


@flax.struct.dataclass
class SampleStats:
    """What a run measured, every per-level array indexed ``[t - 1]`` for level ``t``.

    ``accept``: mean acceptance probability (NaN where no Metropolis test runs).
    ``nonfinite`` / ``escaped``: chains not finite / beyond the escape bound at
    the end of the level. ``ess``: effective sample size of the importance
    weights on entering the level, before any resampling (NaN without weights).
    ``log_weights`` [num] and ``log_normalizer`` (the estimate of ``log Z_1``; one
    per population when there are several) are ``None`` where the weights are
    undefined. With several populations ``ess`` sums theirs, and is 0 when any
    is. ``step``: the kernel's step size on entering the level (adapted or from
    the rule; NaN without a kernel). ``nfe``: gradient evaluations per chain.
    """

    accept: Array
    nonfinite: Array
    escaped: Array
    ess: Array
    log_weights: Array | None
    log_normalizer: Array | None
    step: Array | None = None
    nfe: int = flax.struct.field(pytree_node=False, default=0)
    num: int = flax.struct.field(pytree_node=False, default=0)

    @property
    def diverged(self) -> int:
        """Chains not finite or escaped at the end of level 1 (the returned ones)."""
        return int(self.nonfinite[0]) + int(self.escaped[0])

    def accept_low_noise(self, fraction: float = 0.1) -> float:
        """Mean acceptance over the ``fraction`` of levels nearest the data."""
        tail = max(1, round(fraction * self.accept.shape[0]))
        return float(np.mean(np.asarray(self.accept[:tail])))

    def summary(self) -> dict:
        """Plain numbers for logs and tables (JSON-friendly; NaN where undefined)."""
        accept = np.asarray(self.accept, np.float64)
        return {
            "accept_mean": float(np.nanmean(accept)) if np.any(np.isfinite(accept)) else None,
            "accept_level1": float(accept[0]) if np.isfinite(accept[0]) else None,
            "accept_low_noise": (self.accept_low_noise() if np.isfinite(accept[0]) else None),
            "nonfinite": int(self.nonfinite[0]), "escaped": int(self.escaped[0]),
            "max_diverged": int(np.max(np.asarray(self.nonfinite) + np.asarray(self.escaped))),
            "ess_level1": (None if self.log_weights is None
                           else float(self.ess[0]) / max(self.num, 1)),
            "log_normalizer": (None if self.log_normalizer is None
                               else np.asarray(self.log_normalizer, np.float64).tolist()),
            "step_level1": (None if self.step is None or not np.isfinite(self.step[0])
                            else float(self.step[0])),
            "nfe": self.nfe,
        }


def _level_tables(sampler: Sampler, schedule: Schedule, step_scale: Array):
    """Step sizes and masses indexed by level ``0..T+1`` (``T+1`` repeats ``T``: the prior)."""
    beta = jnp.concatenate([schedule.beta, schedule.beta[-1:]])
    step = step_scale * beta**sampler.step.b
    mass = sampler.mass.c * beta**sampler.mass.p
    return step, mass


def _health(state: kernels.ChainState, escape: float) -> tuple[Array, Array]:
    """``(non-finite chains, escaped chains)`` of a batch, as int32 counts."""
    finite = kernels._finite_rows(state.x, state.grad) & ~jnp.isnan(state.log_prob)
    escaped = finite & (jnp.max(jnp.abs(jnp.where(finite[:, None], state.x, 0.0)), -1) > escape)
    return jnp.sum(~finite).astype(jnp.int32), jnp.sum(escaped).astype(jnp.int32)


def _evaluate_level(target: Density, x: Array, t: Array, fkc: bool):
    """``(log pi_t, grad log pi_t, FKC increment or 0)`` at level ``t``.

    With ``fkc`` and a product target, the factors' scores come from the same
    leaf evaluations as the product's (``compose.child_parts``).
    """
    if fkc and isinstance(target, compose.Product):
        scores = compose.child_parts(target, x, t, compose.SCORE)
        grad = sum(w * s for w, s in zip(target.weights, scores))
        log_prob = jnp.zeros(x.shape[:1], x.dtype)
        return log_prob, grad, weights.fkc_increment(scores, target.weights, 1.0)
    if target.has_log_prob:
        log_prob, grad, _ = kernels.evaluate_finite(target, x, t)
    else:  # no density to zero: a score-only chain shows its divergence as it is
        log_prob, grad = kernels.evaluate(target, x, t)
    # One model alone has no Feynman-Kac correction: its reverse step is the diffusion's own.
    return log_prob, grad, jnp.zeros(x.shape[:1], x.dtype) if fkc else None


def _reference(target: Density, schedule: Schedule, z: Array, matched: bool):
    """Chains at the reference ``N(0, c I)`` and its log-density; ``c = 1`` unless ``matched``."""
    c = jnp.float32(1.0)
    if matched:
        grad = kernels.evaluate(target, z, jnp.int32(schedule.num_levels))[1]
        c = jnp.sum(z * z) / jnp.maximum(-jnp.sum(z * grad), 1e-6 * jnp.sum(z * z))
    x = z * jnp.sqrt(c)
    return x, weights.log_normal(x, 0.0, c)


def _population_ess(log_w: Array, populations: int) -> Array:
    """Summed ESS of the populations' weights; 0 when any population's weights are all zero."""
    ess = jax.vmap(weights.effective_sample_size)(log_w.reshape(populations, -1))
    return jnp.where(jnp.all(ess > 0), jnp.sum(ess), 0.0)


def _run(target: Density, schedule: Schedule, key: Array, step_scale: Array, *,
         sampler: Sampler, num: int, denoise: bool, escape: float, mesh: Mesh | None,
         populations: int = 1):
    constrain = (lambda a: a) if mesh is None else partial(
        jax.lax.with_sharding_constraint, shardings=NamedSharding(mesh, PartitionSpec(CHAINS)))
    num_levels = schedule.num_levels
    step, mass = _level_tables(sampler, schedule, step_scale)
    kernel = sampler.spec.kernel
    reverse = kernel is None or sampler.reverse_first
    track_weights = (target.has_log_prob and sampler.invariant) or sampler.fkc
    # A reverse step whose exact weights steer resampling proposes with variance beta
    # (weights.py); FKC weights do not involve the step's density, and are closer with btilde.
    smc_proposal = sampler.resample_ess > 0 and not sampler.fkc

    k_x, k_v = jax.random.split(jax.random.fold_in(key, 0))
    z = constrain(jax.random.normal(k_x, (num, target.dim)))
    v = constrain(jax.random.normal(k_v, (num, target.dim)) * jnp.sqrt(mass[num_levels]))
    # The cache starts as the reference "level T + 1", so entering level T is
    # an ordinary level change for the importance weights.
    x, log_ref = _reference(target, schedule, z, sampler.matched_reference)
    state = kernels.ChainState(x=x, v=v, log_prob=log_ref, grad=-x)

    def level(carry, t):
        state, log_w, log_scale = carry
        level_key = jax.random.fold_in(key, t)
        x = state.x
        t_from = jnp.minimum(t + 1, num_levels)
        if reverse:
            stepped = kernels.reverse_step(state, jax.random.fold_in(level_key, 1 << 20),
                                           t_from, schedule, upper_variance=smc_proposal)
            x = jnp.where(t < num_levels, stepped, x)
        log_prob, grad, fkc_term = _evaluate_level(target, x, t, sampler.fkc)
        if fkc_term is not None:
            # The increment of the reverse step about to leave level t, taken now:
            # a function of the chain at level t, so resampling may use it at once.
            log_w = log_w + fkc_term * schedule.beta[t]
        elif track_weights:
            # -inf - (-inf) is NaN: a chain at zero weight stays at zero weight.
            log_w = log_w + log_prob - state.log_prob
            if reverse:
                correction = weights.reverse_proposal_correction(
                    state.x, state.grad, x, t_from, schedule, upper_variance=smc_proposal)
                log_w = log_w + jnp.where(t < num_levels, correction, 0.0)
        log_w = weights.finite_log_weights(log_w)
        state = kernels.ChainState(x=x, v=state.v * jnp.sqrt(mass[t] / mass[t + 1]),
                                   log_prob=log_prob, grad=grad)
        if sampler.resample_ess > 0:
            # Always resample entering level 1, so the returned (unweighted)
            # chains carry the weights; its kernel steps then spread duplicates.
            state, log_w, ess = weights.resample(
                state, log_w, jax.random.fold_in(level_key, 1 << 21), sampler.resample_ess,
                t == 1, constrain, populations)
            ess = jnp.where(jnp.all(ess > 0), jnp.sum(ess), 0.0)
        else:
            ess = _population_ess(log_w, populations)
        if kernel is None:
            return (state, log_w, log_scale), (jnp.nan, *_health(state, escape), ess, jnp.nan)
        level_step = step[t] * jnp.exp(log_scale)

        def kernel_step(carry, k):
            state, log_scale = carry
            params = kernels.LevelParams(t=t, step_size=step[t] * jnp.exp(log_scale),
                                         mass=mass[t], damping=jnp.float32(sampler.damping),
                                         leapfrog=sampler.leapfrog)
            state, prob = kernel(target, state, jax.random.fold_in(level_key, k), params)
            state = jax.tree_util.tree_map(constrain, state)
            if sampler.adapt > 0:  # from the population's acceptance, so no chain is favoured
                log_scale = log_scale + ADAPT_RATE * (jnp.mean(prob) - sampler.adapt)
            return (state, log_scale), jnp.mean(prob)

        (state, log_scale), probs = jax.lax.scan(kernel_step, (state, log_scale),
                                                 jnp.arange(sampler.steps_per_level))
        return ((state, log_w, log_scale),
                (jnp.mean(probs), *_health(state, escape), ess, level_step))

    levels = jnp.arange(num_levels, 0, -1)
    init = (state, jnp.zeros(num), jnp.float32(0.0))
    (state, log_w, _), per_level = jax.lax.scan(level, init, levels)
    x = state.x
    if denoise:
        x = kernels.reverse_step(state, jax.random.fold_in(key, 0), jnp.int32(1), schedule)
    accept, nonfinite, escaped, ess, steps = (a[::-1] for a in per_level)
    return x, accept, nonfinite, escaped, ess, log_w, steps


_run_jit = jax.jit(_run, static_argnames=("sampler", "num", "denoise", "escape", "mesh",
                                          "populations"))


def chain_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all) whose axis shards the chains."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (CHAINS,))


def _validate(target: Density, sampler: Sampler, schedule: Schedule, num: int,
              mesh: Mesh | None, populations: int = 1) -> None:
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
    if sampler.resample_ess > 0 and not sampler.fkc:
        target.require_log_prob("resampling by importance weights")
    step, mass = (np.asarray(a) for a in _level_tables(sampler, schedule, sampler.step.a))
    if not (np.all(np.isfinite(step[1:])) and np.all(step[1:] > 0)):
        raise ValueError(f"sampler {sampler.name!r}: step sizes must be finite and positive, "
                         f"got a={sampler.step.a}, b={sampler.step.b} -> range "
                         f"[{step[1:].min()}, {step[1:].max()}]")
    if not (np.all(np.isfinite(mass[1:])) and np.all(mass[1:] > 0)):
        raise ValueError(f"sampler {sampler.name!r}: masses must be finite and positive")
    if num < 1:
        raise ValueError(f"num must be positive, got {num}")
    if populations < 1 or num % populations:
        raise ValueError(f"num={num} chains cannot form {populations} equal populations; "
                         f"use a multiple of {populations}")
    if mesh is not None and num % mesh.size:
        raise ValueError(f"num={num} chains cannot be split evenly over {mesh.size} devices; "
                         f"use a multiple of {mesh.size}")


def sample(target: Density, sampler: Sampler, schedule: Schedule, key: Array, num: int, *,
           denoise: bool = True, escape: float = 100.0, mesh: Mesh | None | str = "auto",
           populations: int = 1) -> tuple[Array, SampleStats]:
    """Draws ``num`` samples ``[num, dim]`` from ``target``: at level 0, or at level 1
    (the level the importance weights refer to) with ``denoise=False``.

    ``populations`` splits the chains into that many equal, contiguous blocks, each
    its own SMC run: resampling never moves a chain into another block, and
    ``log_normalizer`` is one estimate per block. This is how one call samples many
    conditions at once (block ``i`` = the chains whose condition arrays ask for image
    or class ``i``): a composition whose conditions are array leaves compiles once.
    Without resampling, blocks only change the reported ESS and ``log Z``.

    ``escape`` is the bound on ``|x|_inf`` past which a finite chain counts as
    escaped (diverged). ``mesh="auto"`` shards the chains over all devices
    when there are several; pass ``None`` to keep them on one device or a
    :func:`chain_mesh` of your own.

    Raises ``ValueError`` when resampling finds every importance weight of a
    population zero: the target has no finite log-density anywhere its chains are.
    """
    if mesh == "auto":
        mesh = chain_mesh() if jax.device_count() > 1 else None
    if not escape > 0:
        raise ValueError(f"escape must be a positive bound on |x|, got {escape}")
    if isinstance(sampler, Sampler) and sampler.name == "reverse_equal":
        _validate(target, sampler, schedule, num, mesh, populations)
        target, schedule = equal_cost.last_levels(target, schedule, sampler.budget)
    _validate(target, sampler, schedule, num, mesh, populations)
    x, accept, nonfinite, escaped, ess, log_w, steps = _run_jit(
        target, schedule, key, jnp.float32(sampler.step.a), sampler=sampler, num=num,
        denoise=denoise, escape=float(escape), mesh=mesh, populations=populations)
    # FKC weights drop a constant per level: they resample, but estimate no log Z.
    weights_valid = target.has_log_prob and sampler.invariant and not sampler.fkc
    if (weights_valid or sampler.fkc) and sampler.resample_ess > 0:
        dead = np.flatnonzero(np.asarray(ess) == 0)
        if dead.size:
            raise ValueError(
                f"every importance weight is zero from level {int(dead.max()) + 1} down: "
                f"{target.describe()} has no finite log-density where the "
                f"{num // populations} chains of a population are, so there is nothing to "
                "resample")
    log_normalizer = None
    if weights_valid:
        per_population = log_w.reshape(populations, -1)
        log_normalizer = (jax.nn.logsumexp(per_population, -1)
                          - math.log(per_population.shape[1]))
        log_normalizer = log_normalizer[0] if populations == 1 else log_normalizer
    if not sampler.spec.needs_log_prob:  # no Metropolis test: nothing was accepted or rejected
        accept = jnp.full_like(accept, jnp.nan)
    has_ess = weights_valid or sampler.fkc
    stats = SampleStats(accept=accept, nonfinite=nonfinite, escaped=escaped,
                        ess=ess if has_ess else jnp.full_like(ess, jnp.nan),
                        log_weights=log_w if weights_valid else None,
                        log_normalizer=log_normalizer, step=steps,
                        nfe=sampler.nfe(schedule.num_levels), num=num)
    _warn_if_diverged(stats, sampler, escape)
    return x, stats


def _warn_if_diverged(stats: SampleStats, sampler: Sampler, escape: float) -> None:
    bad = np.asarray(stats.nonfinite) + np.asarray(stats.escaped)
    if bad.max() == 0:
        return
    worst = int(np.argmax(bad)) + 1
    advice = (f"Lower the step size (step.a = {sampler.step.a:g})." if sampler.spec.kernel
              else "The scores are unstable there: check the models.")
    logging.warning(
        "%s: chains diverged: %d of %d at level %d (%d not finite, %d beyond |x| = %g); "
        "%d at level 1. %s", sampler.name, bad.max(), stats.num, worst,
        int(stats.nonfinite[worst - 1]), int(stats.escaped[worst - 1]), escape, stats.diverged,
        advice)


@partial(jax.jit, static_argnames=("sampler", "num_steps"))
def _run_chain(target, x, v, key, t, step_size, mass, *, sampler, num_steps):
    if target.has_log_prob:
        log_prob, grad, _ = kernels.evaluate_finite(target, x, t)
    else:
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
        _, accept, *_ = _run_jit(target, schedule, jax.random.fold_in(key, i),
                                 jnp.float32(math.exp(log_a)), sampler=sampler, num=num,
                                 denoise=False, escape=100.0, mesh=None)
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
