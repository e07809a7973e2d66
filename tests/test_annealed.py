"""Annealed samplers on compositions of oracles, against exact targets.

The product of two Gaussian mixtures is a Gaussian mixture in closed form
(:func:`oracles.gmm_product`), so the level-1 target of ``A * B`` is known
exactly; mixtures and negations are checked against exact targets normalized
on a grid (:mod:`compdiff.exact`).
"""

import jax
import numpy as np
import pytest

from compdiff import compose, exact, oracles, samplers, testing
from compdiff.testing import min_ks_pvalue, mode_weights_tv

NUM = 4000


@pytest.fixture(scope="module")
def ring_and_bar(schedule):
    ring, bar, _ = testing.ring_and_bar(schedule)
    return ring, bar


PRODUCT_SAMPLERS = {
    "mala": samplers.get("mala", steps_per_level=10, step=samplers.StepRule(1.3, 0.5),
                         resample_ess=0.5),
    "hmc": samplers.get("hmc", steps_per_level=3, leapfrog=3, step=0.03, resample_ess=0.5),
}


@pytest.fixture(scope="module")
def product_runs(ring_and_bar, schedule):
    ring, bar = ring_and_bar
    target = oracles.gmm_product(ring.at_level(1), bar.at_level(1))
    reference = target.sample(jax.random.PRNGKey(7), NUM)
    runs = {name: samplers.sample(ring * bar, s, schedule, jax.random.PRNGKey(0), NUM,
                                  denoise=False)
            for name, s in {**PRODUCT_SAMPLERS, "reverse": samplers.get("reverse")}.items()}
    return target, reference, runs


@pytest.mark.parametrize("name", sorted(PRODUCT_SAMPLERS))
def test_annealed_metropolis_samples_the_exact_product(name, product_runs):
    target, reference, runs = product_runs
    x, stats = runs[name]
    assert min_ks_pvalue(x, reference) > 1e-3
    assert mode_weights_tv(x, target) < 0.04
    assert stats.log_weights is not None and stats.accept.shape == (100,)


def test_reverse_diffusion_on_the_product_is_measurably_wrong(product_runs):
    """RRR section 3: summed scores are not the score of the diffused product."""
    target, reference, runs = product_runs
    x, stats = runs["reverse"]
    assert min_ks_pvalue(x, reference) < 1e-5
    assert mode_weights_tv(x, target) > 0.06
    assert np.all(np.isnan(stats.accept))
    # It carries SMC weights (the reverse step as a proposal); left unused, they show
    # how far off the chains are.
    assert float(stats.ess[0]) < 0.9 * stats.num


def _check_against_grid(target_density, sampler, schedule, seed=0):
    grid = exact.on_grid(target_density, 1, extent=1.6, size=500)
    x, _ = samplers.sample(target_density, sampler, schedule, jax.random.PRNGKey(seed), NUM,
                          denoise=False)
    reference = grid.sample(jax.random.PRNGKey(seed + 1), NUM)
    ll, ll_exact = float(np.mean(grid.log_prob(x))), float(np.mean(grid.log_prob(reference)))
    return min_ks_pvalue(x, reference), ll, ll_exact


def test_mixture_of_oracles_matches_grid_target(ring_and_bar, schedule, skewed_gmm):
    ring, _ = ring_and_bar
    target = compose.mixture([ring, skewed_gmm], [0.3, 0.7])
    hmc = samplers.get("hmc", steps_per_level=3, leapfrog=3, step=0.03, resample_ess=0.5)
    pvalue, ll, ll_exact = _check_against_grid(target, hmc, schedule)
    assert pvalue > 1e-3 and abs(ll - ll_exact) < 0.1


def test_negation_of_oracles_matches_grid_target(ring_and_bar, schedule):
    ring, _ = ring_and_bar
    angles = np.arange(4) * np.pi / 4 + np.pi / 2
    left = oracles.gaussian_mixture(0.5 * np.stack([np.cos(angles), np.sin(angles)], -1), 0.05,
                                    schedule, name="left")
    target = compose.negation(ring, left, alpha=0.5)
    hmc = samplers.get("hmc", steps_per_level=3, leapfrog=3, step=0.03, resample_ess=0.5)
    pvalue, ll, ll_exact = _check_against_grid(target, hmc, schedule)
    assert pvalue > 1e-3 and abs(ll - ll_exact) < 0.1
    # Reverse diffusion on the same negation is measurably off.
    pvalue_rev, _, _ = _check_against_grid(target, samplers.get("reverse"), schedule)
    assert pvalue_rev < 1e-5


def test_tuning_reaches_the_target_acceptance(ring_and_bar, schedule):
    ring, bar = ring_and_bar
    mala = samplers.get("mala", steps_per_level=2, step=samplers.StepRule(1e-4, 0.5))
    tuned = samplers.tune_step(ring * bar, mala, schedule, jax.random.PRNGKey(0), 0.6, num=128)
    _, stats = samplers.sample(ring * bar, tuned, schedule, jax.random.PRNGKey(1), 512)
    assert abs(float(np.mean(stats.accept[:10])) - 0.6) < 0.05  # the 10 lowest-noise levels
    assert tuned.step.a > 100 * mala.step.a


def test_reverse_diffusion_on_one_oracle_samples_its_exact_level(schedule):
    """With the exact score, ancestral sampling is exact: level 1 of the ring, mode by mode.

    The radial spread of a ring mode at level 1 is its std (0.03) widened by
    the noise; a score read at a neighbouring level widens or narrows it.
    """
    from compdiff.data import toy2d

    ring = toy2d.get("ring", schedule)
    x, _ = samplers.sample(ring, samplers.get("reverse"), schedule, jax.random.PRNGKey(0), NUM,
                           denoise=False)
    exact = ring.at_level(1)
    reference = exact.sample(jax.random.PRNGKey(1), NUM)
    assert min_ks_pvalue(x, reference) > 1e-3
    assert mode_weights_tv(x, exact) < 0.03
    radius, radius_ref = (np.linalg.norm(np.asarray(a), axis=-1) for a in (x, reference))
    se = radius_ref.std() * np.sqrt(2 / NUM)  # standard error of a std estimate
    assert abs(radius.std() - radius_ref.std()) < 4 * se


def test_samples_come_out_denoised_at_level_zero_by_default(schedule):
    from compdiff.data import toy2d

    ring = toy2d.get("ring", schedule)
    x, _ = samplers.sample(ring, samplers.get("reverse"), schedule, jax.random.PRNGKey(0), NUM)
    x1, _ = samplers.sample(ring, samplers.get("reverse"), schedule, jax.random.PRNGKey(0), NUM,
                            denoise=False)
    radius, radius1 = (np.linalg.norm(np.asarray(a), axis=-1) for a in (x, x1))
    # Level 0 is the data: ring modes of std 0.03 at radius 0.5 (level 1 is wider).
    assert abs(np.median(radius) - 0.5) < 0.01 and radius.std() < radius1.std()


def test_reverse_equal_is_a_registered_sampler_at_a_given_budget():
    from compdiff import schedules
    from compdiff.data import toy2d

    base = schedules.get("linear", 20)
    levels, offset = samplers.equal_cost_levels("linear", float(base.sigma[1]), 60)
    longer = schedules.get("linear", levels)
    ring = toy2d.get("ring", longer)
    reverse_equal = samplers.get("reverse_equal", budget=60)
    assert "reverse_equal" in samplers.names() and reverse_equal.nfe(levels) == 60
    x, stats = samplers.sample(ring, reverse_equal, longer, jax.random.PRNGKey(0), NUM,
                               denoise=False)
    assert stats.nfe == 60 and stats.accept.shape == (60,)
    reference = ring.at_level(offset + 1).sample(jax.random.PRNGKey(1), NUM)
    assert min_ks_pvalue(x, reference) > 1e-3
    with pytest.raises(ValueError, match="budget"):
        samplers.get("reverse_equal")
    with pytest.raises(ValueError, match="budget"):
        samplers.get("hmc", budget=10)
    with pytest.raises(ValueError, match="schedule has 20"):
        samplers.sample(ring, samplers.get("reverse_equal", budget=60), base,
                        jax.random.PRNGKey(0), 8)


def test_default_hmc_damping_sheds_energy_with_three_steps_per_level(schedule):
    """The default damping (``scripts/damping.py``) samples an exact Gaussian's level-1
    variance at RRR's 2D budget of 3 HMC steps per level; 0.9 is 9.9 standard errors off."""
    gauss = oracles.gaussian_mixture([[0.0, 0.0]], 0.2, schedule)
    hmc = samplers.get("hmc", steps_per_level=3, leapfrog=3, step=0.03)
    x, _ = samplers.sample(gauss, hmc, schedule, jax.random.PRNGKey(0), NUM, denoise=False)
    sq = np.asarray(x, np.float64) ** 2
    z = (sq.mean() - float(gauss.at_level(1).covs[0, 0, 0])) / (sq.std() / np.sqrt(sq.size))
    assert abs(z) < 4, f"level-1 variance {sq.mean():.5f} is {z:+.1f} standard errors off"
