"""Is a composition a distribution, and does it hold mass? Checks to run before trusting samples.

**Improper compositions.** A negation ``p / q ** alpha`` of trained energy
models has no normalizer when ``-alpha log q`` outgrows ``log p`` far from the
data: the "density" grows without bound and any sampler returns whatever its
window allows. :func:`improper_reason` follows rays from the origin past the
data window (radii ``extent * 2^k``) and calls the composition improper when
along some rays its log-density keeps growing all the way out. For a
score-only composition it reads the radial score ``<s(r u), u>`` instead; a
learned score field far from the data is not the gradient of anything, so
the table and ``scripts/sample.py`` check log-density compositions only
(reverse diffusion never needs a normalizer).

**Empty compositions.** A product of densities that share no mass, or a
negation whose negated factor covers the positive ones, samples to something
that looks like an answer. :func:`mass_verdict` measures it with annealed
importance sampling / SMC log-normalizers (:func:`compdiff.samplers.sample`'s
``log_normalizer``) for the composition and its factors at level 1. For
``pi = prod_i p_i^{w_i} * prod_j q_j^{-a_j}`` (``w_i, a_j > 0``, ``W = sum w_i``,
``P = prod_i p_i^{w_i}``):

- overlap of the positive factors (Hoelder: ``Z(P) <= prod_i Z(p_i^W)^{w_i/W}``,
  equality iff the ``p_i`` are equal)::

      log m+ = log Z(P) - sum_i (w_i / W) log Z(p_i^W)  <= 0

- what the negation leaves, in units of each negated density's typical value
  ``qbar_j = E_{q_j}[q_j] = Z(q_j^2) / Z(q_j)``::

      log m- = log Z(pi) - log Z(P) + sum_j a_j log qbar_j = log E_P[prod_j (q_j / qbar_j)^-a_j]

Both are invariant to each factor's unknown normalizer, so they apply to
trained energy models as to oracles. ``log m+`` per dimension far below 0:
the factors share (almost) no mass. ``log m-`` near 0 or below: the positive
part lies where the negated densities are typical, so the negation removes
nothing ("p but not q" is empty). Thresholds and their false-alarm rates on
the oracle compositions are in ``docs/design_notes.md``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from compdiff import compose, samplers
from compdiff.compose import Density
from compdiff.schedules import Schedule

Array = jnp.ndarray

#: ``log m+ / dim`` below this: the positive factors share no mass.
OVERLAP_THRESHOLD = -3.0
#: ``log m-`` below this: the negation removes (almost) nothing.
NEGATION_THRESHOLD = math.log(2.0)


# Module-level, so a density checked again (every sampler of a table row) reuses the compiled
# program instead of tracing a new lambda each time.
_log_prob = jax.jit(lambda density, x, t: density.log_prob(x, t))
_score = jax.jit(lambda density, x, t: density.score(x, t))


def _directions(dim: int, num_rays: int, key: Array) -> np.ndarray:
    if dim == 2:
        angles = 2 * np.pi * np.arange(num_rays) / num_rays
        return np.stack([np.cos(angles), np.sin(angles)], -1).astype(np.float32)
    u = np.asarray(jax.random.normal(key, (num_rays, dim)), np.float64)
    return (u / np.linalg.norm(u, axis=-1, keepdims=True)).astype(np.float32)


def improper_reason(density: Density, t: int = 1, *, extent: float = 2.0, num_rays: int = 64,
                    doublings: int = 6, key: Array | None = None) -> str | None:
    """Why ``density`` at level ``t`` has no normalizer, or ``None`` if no ray shows growth.

    Along each of ``num_rays`` directions ``u`` the level-``t`` log-density is
    read at ``r = extent * 2^k``, ``k = 0..doublings``. A ray on which it rises
    at every step outward (score-only: ``<score, u> > 0`` at every radius)
    grows without bound as far as the check can see.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    u = _directions(density.dim, num_rays, key)
    radii = extent * 2.0 ** np.arange(doublings + 1)
    points = (radii[None, :, None] * u[:, None, :]).reshape(-1, density.dim).astype(np.float32)
    level = jnp.int32(t)
    if density.has_log_prob:
        log_p = np.asarray(_log_prob(density, points, level), np.float64).reshape(num_rays,
                                                                                  len(radii))
        growing = np.all(np.diff(log_p, axis=1) > 0, axis=1)
    else:
        score = np.asarray(_score(density, points, level), np.float64)
        radial = np.sum(score.reshape(num_rays, len(radii), -1) * u[:, None, :], -1)
        growing = np.all(radial > 0, axis=1)
    if not growing.any():
        return None
    ray = int(np.flatnonzero(growing)[0])
    if density.has_log_prob:
        values = ", ".join(f"{v:.4g} at r={r:g}" for v, r in zip(log_p[ray], radii))
        evidence = f"log-density {values}"
    else:
        evidence = f"radial score > 0 at every radius from {radii[0]:g} to {radii[-1]:g}"
    return (f"improper: {density.describe()} has no normalizer at level {t}: its density grows "
            f"without bound along {int(growing.sum())} of {num_rays} rays from the origin "
            f"(e.g. {evidence})")


@dataclasses.dataclass(frozen=True)
class MassVerdict:
    """The outcome of :func:`mass_verdict`; ``None`` fields did not apply."""

    empty: bool
    reason: str
    log_overlap: float | None  # log m+ (per composition, not per dimension)
    log_negation: float | None  # log m-
    ess: float  # smallest level-1 ESS fraction of the AIS runs

    def line(self) -> str:
        return ("EMPTY: " if self.empty else "not empty: ") + self.reason


def _log_z(density: Density, sampler: samplers.Sampler, schedule: Schedule, key: Array,
           num: int) -> tuple[float, float]:
    _, stats = samplers.sample(density, sampler, schedule, key, num, denoise=False)
    return float(stats.log_normalizer), float(stats.summary()["ess_level1"])


def mass_verdict(target: Density, sampler: samplers.Sampler, schedule: Schedule, key: Array,
                 num: int = 1000) -> MassVerdict:
    """Whether the product or negation ``target`` holds negligible mass relative to its factors.

    Runs ``sampler`` (Metropolis-adjusted, so its importance weights are
    valid; SMC resampling makes the estimates sharper) on the composition
    and on the powers of its factors the ratios above need.
    """
    if not sampler.spec.needs_log_prob:
        raise ValueError(f"mass_verdict needs importance weights; {sampler.name!r} has none "
                         "(use mala or hmc)")
    target.require_log_prob("mass_verdict")
    if not isinstance(target, compose.Product) or len(target.children) < 2:
        return MassVerdict(False, "not a product or negation of several densities: a "
                           "mixture or a single density holds the mass of its components",
                           None, None, 1.0)
    weights = [float(w) for w in target.weights]
    positive = [(c, w) for c, w in zip(target.children, weights) if w > 0]
    negative = [(c, -w) for c, w in zip(target.children, weights) if w < 0]
    if not positive:
        raise ValueError(f"{target.describe()} has no positive factor: it cannot be normalized")
    keys = iter(jax.random.split(key, 2 * len(target.children) + 2))
    ess = []

    def log_z(density):
        value, e = _log_z(density, sampler, schedule, next(keys), num)
        ess.append(e)
        return value

    part = compose.product([c for c, _ in positive], [w for _, w in positive])
    log_z_part = log_z(part)
    total = sum(w for _, w in positive)
    log_overlap = None
    if len(positive) > 1:
        log_overlap = log_z_part - sum(w / total * log_z(compose.product([c], [total]))
                                       for c, w in positive)
    log_negation = None
    if negative:
        log_qbar = [log_z(compose.product([q], [2.0])) - log_z(q) for q, _ in negative]
        log_negation = (log_z(target) - log_z_part
                        + sum(a * lq for (_, a), lq in zip(negative, log_qbar)))
    per_dim = None if log_overlap is None else log_overlap / target.dim
    if per_dim is not None and per_dim < OVERLAP_THRESHOLD:
        empty, reason = True, (f"the positive factors share almost no mass: log overlap "
                               f"{log_overlap:.3g} nats ({per_dim:.3g} per dimension, threshold "
                               f"{OVERLAP_THRESHOLD:g})")
    elif log_negation is not None and log_negation < NEGATION_THRESHOLD:
        empty, reason = True, (f"the negated factors cover the positive ones: the negation "
                               f"leaves log m- = {log_negation:.3g} (threshold "
                               f"{NEGATION_THRESHOLD:.3g}), i.e. it removes nothing")
    else:
        parts = []
        if per_dim is not None:
            parts.append(f"log overlap {log_overlap:.3g} ({per_dim:.3g} per dimension)")
        if log_negation is not None:
            parts.append(f"negation leaves log m- = {log_negation:.3g}")
        empty, reason = False, "; ".join(parts)
    return MassVerdict(empty, reason + f"; min AIS ESS {min(ess):.2f}", log_overlap,
                       log_negation, min(ess))
