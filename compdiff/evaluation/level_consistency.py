"""Whether a density's dependence on the noise level agrees with its data.

Denoising score matching fits ``grad_x log p_t`` at every level, and nothing ties
the levels' log-densities to each other. Importance weights use exactly that tie:
entering level ``t - 1``, a chain at ``x`` gains the annealed increment

    Delta_t(x) = log p_{t-1}(x) - log p_t(x)

(the target ratio of every SMC and AIS step, docs/smc.md). So a trained energy
can be a good sampler by its gradient (reverse diffusion, MALA) and a bad one by
its weights, when ``Delta_t`` is wrong where chains go astray.

The check: build points at level ``t`` from the data, ``x_t = sqrt(abar_t) x_0 +
sigma_t eps``, and from a reference that is not data (uniform pixel noise for
images), ``n_t = sqrt(abar_t) u + sigma_t eps`` with the same ``eps``, and compare
their increments. For the true densities a point built from noise stands farther
from the data than ``sigma_t``, so it loses more density as the level falls: its
increment is the lower one (``tests/test_level_consistency.py`` checks this on the
exact oracles). An energy whose increments favour the noise-built points steers
SMC's resampling toward noise at every level, whatever the proposal.

Written here because it is a few lines over the ``Density`` interface; no library
computes it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from compdiff.compose import Density
from compdiff.schedules import Schedule

Array = jnp.ndarray


def level_increments(density: Density, data: Array, reference: Array, schedule: Schedule,
                     levels, key: Array) -> list[dict]:
    """Per level ``t`` of ``levels`` (each >= 2): mean ``log p_t`` and mean increment
    ``Delta_t`` of points built from ``data`` [B, d] and from ``reference`` [B, d], and
    ``reference_favoured``, the fraction of (reference, data) pairs whose reference
    increment is the higher (0.5: no preference; near 0 for the true densities)."""
    density.require_log_prob("the level-consistency check")
    rows = []
    for t in levels:
        if not 2 <= t <= schedule.num_levels:
            raise ValueError(f"levels must lie in [2, {schedule.num_levels}], got {t}")
        eps = jax.random.normal(jax.random.fold_in(key, t), data.shape)
        scale, sigma = jnp.sqrt(schedule.abar[t]), schedule.sigma[t]
        row = {"level": int(t)}
        increments = {}
        for name, x0 in (("data", data), ("reference", reference)):
            x = scale * x0 + sigma * eps
            here = density.log_prob(x, jnp.int32(t))
            below = density.log_prob(x, jnp.int32(t - 1))
            increments[name] = np.asarray(below - here, np.float64)
            row[f"log_p_{name}"] = float(np.mean(np.asarray(here)))
            row[f"increment_{name}"] = float(np.mean(increments[name]))
        row["reference_favoured"] = float(np.mean(
            increments["reference"][:, None] > increments["data"][None, :]))
        rows.append(row)
    return rows
