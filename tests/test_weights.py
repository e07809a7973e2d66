"""Importance weights and SMC resampling against exact targets.

Each test here guards one line that a broken kernel or driver gets wrong
while the rest of the suite stays green (issue 11, item 5): the momentum
rescale between levels (E[w] = 1), resetting the weights after resampling
(SMC at every level), and non-finite weights (NaN log-densities).
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from compdiff import samplers
from compdiff.compose import Density
from compdiff.testing import min_ks_pvalue, mode_weights_tv, ring_and_bar

NUM = 4000


def test_importance_weights_have_mean_one_with_a_level_dependent_mass(skewed_gmm, schedule):
    """Oracle levels are normalized and so is the N(0, I) reference, so E[w] = 1.

    The mass follows the noise level (``M_t = beta_t``, 200x over the run) and
    the momentum persists (damping 0.9), so the momentum rescale between levels
    must be exactly ``sqrt(M_t / M_{t+1})`` for the weights to stay unbiased.
    """
    hmc = samplers.get("hmc", steps_per_level=2, leapfrog=2, damping=0.9,
                       step=samplers.StepRule(0.1, 0.5), mass=samplers.MassRule(1.0, 1.0))
    _, stats = samplers.sample(skewed_gmm, hmc, schedule, jax.random.PRNGKey(0), NUM,
                               denoise=False)
    w = np.exp(np.asarray(stats.log_weights, np.float64))
    stderr = w.std() / np.sqrt(len(w))
    assert stderr < 0.02, f"weights too spread for a sharp test (stderr {stderr:.3f})"
    assert abs(w.mean() - 1.0) < 4 * stderr, f"E[w] = {w.mean():.3f} +- {stderr:.3f}, not 1"
    assert abs(float(stats.log_normalizer)) < 4 * stderr


@pytest.fixture(scope="module")
def ring_times_bar(schedule):
    # Off centre, so the product's two modes have unequal weights (0.71 / 0.29):
    # a symmetric target hides weights that are counted twice.
    ring, bar, exact = ring_and_bar(schedule, bar_y=0.15)
    return ring * bar, exact


def test_smc_resampling_at_every_level_samples_the_exact_product(ring_times_bar, schedule):
    """``resample_ess=1`` resamples on entering every level; weights must restart equal."""
    target, exact = ring_times_bar
    mala = samplers.get("mala", steps_per_level=4, step=samplers.StepRule(1.3, 0.5),
                        resample_ess=1.0)
    x, stats = samplers.sample(target, mala, schedule, jax.random.PRNGKey(0), NUM, denoise=False)
    assert np.all(np.asarray(stats.ess)[:10] < 0.999 * NUM)  # the weights did differ
    reference = exact.sample(jax.random.PRNGKey(1), NUM)
    assert min_ks_pvalue(x, reference) > 1e-3
    assert mode_weights_tv(x, exact) < 0.04
    # The product's normalizer: int ring_1 bar_1 = sum_ij of the closed-form factors.
    assert np.isfinite(float(stats.log_normalizer))


@flax.struct.dataclass
class _Holed(Density):
    """N(0, I) at every level, with log-density NaN where ``x_0 > hole`` (2.3% of the mass)."""

    hole: float = flax.struct.field(pytree_node=False, default=2.0)
    dim: int = flax.struct.field(pytree_node=False, default=2)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)

    def log_prob(self, x, t):
        log_p = -0.5 * jnp.sum(x * x, -1) - jnp.log(2 * jnp.pi)
        return jnp.where(x[:, 0] > self.hole, jnp.nan, log_p)


@pytest.mark.parametrize("resample_ess", [0.5, 1.0])
def test_nan_log_densities_get_zero_weight_instead_of_collapsing_smc(schedule, resample_ess):
    """Exact target: N(0, 1) truncated to ``x_0 <= 2``, times N(0, 1)."""
    hmc = samplers.get("hmc", steps_per_level=3, leapfrog=3, step=0.3, damping=0.5,
                       resample_ess=resample_ess)
    x, stats = samplers.sample(_Holed(), hmc, schedule, jax.random.PRNGKey(0), 2000,
                               denoise=False)
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x)) and np.all(x[:, 0] <= 2.0)
    truncated = scipy.stats.truncnorm(-np.inf, 2.0)
    assert scipy.stats.ks_1samp(x[:, 0], truncated.cdf).pvalue > 1e-3
    assert scipy.stats.ks_1samp(x[:, 1], scipy.stats.norm.cdf).pvalue > 1e-3
    assert np.all(np.isfinite(np.asarray(stats.log_weights)))


def test_every_weight_zero_is_a_clear_error(schedule):
    hmc = samplers.get("hmc", steps_per_level=1, step=0.1, resample_ess=0.5)
    with pytest.raises(ValueError, match="every importance weight is zero"):
        samplers.sample(_Holed(hole=-100.0), hmc, schedule, jax.random.PRNGKey(0), 64)


@pytest.mark.parametrize("name", ["ula", "uhmc"])
def test_resampling_with_unadjusted_kernels_is_refused_when_built(name):
    with pytest.raises(ValueError, match=f"sampler '{name}' cannot resample.*unadjusted"):
        samplers.get(name, resample_ess=0.5)


@pytest.mark.parametrize("value", [None, "0.5", True, -0.1])
def test_resample_ess_must_be_a_number_in_the_unit_interval(value):
    with pytest.raises(ValueError, match="resample_ess must be a number in"):
        samplers.get("hmc", resample_ess=value)


def test_chains_that_land_where_the_density_is_nan_walk_out_without_resampling(schedule):
    """Entering a level follows the kernels' rule: a NaN log-density is zero density, from
    which any finite move is accepted. Read as it is, the NaN sticks (43 of 2000 chains
    end in the hole, where the exact target has no mass)."""
    hmc = samplers.get("hmc", steps_per_level=3, leapfrog=3, step=0.3, damping=0.5)
    x, stats = samplers.sample(_Holed(), hmc, schedule, jax.random.PRNGKey(0), 2000,
                               denoise=False)
    assert int(np.sum(np.asarray(x)[:, 0] > 2.0)) <= 5
    assert int(np.max(np.asarray(stats.nonfinite))) == 0


@flax.struct.dataclass
class _Tilted(Density):
    """``N(0, I)`` tilted by ``exp(s_t x_0)`` per chain, ``s_t = tilt (1 - t / levels)``: at
    level 0 chain ``i``'s target is ``N(tilt_i, 1)`` in ``x_0``, with ``log Z = tilt_i^2 / 2``."""

    tilt: jnp.ndarray
    levels: int = flax.struct.field(pytree_node=False, default=100)
    dim: int = flax.struct.field(pytree_node=False, default=2)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)

    def log_prob(self, x, t):
        s = self.tilt * (1.0 - t / self.levels)
        return -0.5 * jnp.sum(x * x, -1) - jnp.log(2 * jnp.pi) + s * x[:, 0]


def test_populations_resample_only_within_themselves(schedule):
    """Two conditions in one call, each its own SMC population: each block's mean and
    ``log Z`` are its own exact ones. One population for both moves chains of the weak
    tilt into the strong one's (block 0's mean 2.7 instead of 1)."""
    size, tilts = 1000, (1.0, 3.0)
    target = _Tilted(jnp.repeat(jnp.asarray(tilts), size), levels=schedule.num_levels)
    hmc = samplers.get("hmc", steps_per_level=2, leapfrog=2, step=0.3, resample_ess=0.5)
    x, stats = samplers.sample(target, hmc, schedule, jax.random.PRNGKey(0), 2 * size,
                               denoise=False, populations=2)
    means = np.asarray(x)[:, 0].reshape(2, size).mean(1)
    np.testing.assert_allclose(means, tilts, atol=0.1)
    np.testing.assert_allclose(np.asarray(stats.log_normalizer), np.square(tilts) / 2, atol=0.2)
    mixed, _ = samplers.sample(target, hmc, schedule, jax.random.PRNGKey(0), 2 * size,
                               denoise=False)
    assert np.asarray(mixed)[:size, 0].mean() > tilts[0] + 0.5


def test_populations_must_divide_the_chains(schedule):
    with pytest.raises(ValueError, match="cannot form 3 equal populations"):
        samplers.sample(_Holed(), samplers.get("hmc", resample_ess=0.5), schedule,
                        jax.random.PRNGKey(0), 10, populations=3)


@flax.struct.dataclass
class _DeadRows(Density):
    """``N(0, I)``, but NaN (zero density) everywhere for the chains marked ``dead``."""

    dead: jnp.ndarray
    dim: int = flax.struct.field(pytree_node=False, default=2)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)

    def log_prob(self, x, t):
        log_p = -0.5 * jnp.sum(x * x, -1) - jnp.log(2 * jnp.pi)
        return jnp.where(self.dead, jnp.nan, log_p)


def test_a_population_with_no_finite_weight_is_an_error(schedule):
    """One empty population among live ones: its resampling has nothing to draw from, so the
    run raises, though the summed weights of all chains are fine."""
    dead = jnp.repeat(jnp.asarray([False, True]), 8)
    hmc = samplers.get("hmc", resample_ess=0.5)
    with pytest.raises(ValueError, match="chains of a population"):
        samplers.sample(_DeadRows(dead), hmc, schedule, jax.random.PRNGKey(0), 16,
                        populations=2)
