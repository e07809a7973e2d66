"""SMC at image dimension, step adaptation and Feynman-Kac correctors, on exact targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from compdiff import samplers, schedules
from compdiff import subspace_oracles as so
from compdiff.samplers import weights

LEVELS, CHAINS = 100, 1000


def _targets(dim: int, levels: int = LEVELS):
    schedule = schedules.get("linear", levels)
    basis = so.random_basis(dim, 2, seed=dim)
    four = so.subspace_mixture(basis, [[-2, -1], [-2, 1.5], [2, -1.5], [2, 1]], 0.6, schedule,
                               [0.2, 0.3, 0.3, 0.2], name="four")
    two = so.subspace_mixture(basis, [[-1.5, -1.5], [1.5, 1.5]], 1.0, schedule, [0.5, 0.5])
    likelihood = so.subspace_mixture(basis, [[1.0, 0.5]], 1.2, schedule,
                                     background_var=float("inf"))
    return schedule, {"product": (four, two), "guided": (four, likelihood)}


def _errors(first, second, x, stats, num):
    exact = so.product(first, second)
    reference = so.reference_mode_weights(exact, jax.random.PRNGKey(1))
    floor = so.exact_mode_tv_floor(exact, reference, num, jax.random.PRNGKey(2), 50)[0]
    structured, background = so.variance_ratios(exact, x)
    return so.mode_tv(exact, x, reference) / floor, structured, background


def test_reverse_proposal_correction_is_the_closed_form_gaussian_ratio():
    schedule = schedules.get("linear", 50)
    rng = np.random.default_rng(0)
    x, grad, x_new = (rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3))
    t = 7
    alpha, beta, btilde = (float(a[t]) for a in (schedule.alpha, schedule.beta, schedule.btilde))
    mean = (x + beta * grad) / np.sqrt(alpha)
    expected = [scipy.stats.multivariate_normal(np.sqrt(alpha) * xn, beta).logpdf(xi)
                - scipy.stats.multivariate_normal(m, btilde).logpdf(xn)
                for xi, xn, m in zip(x, x_new, mean)]
    got = weights.reverse_proposal_correction(jnp.asarray(x), jnp.asarray(grad),
                                              jnp.asarray(x_new), jnp.int32(t), schedule,
                                              upper_variance=False)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-3)
    # SMC's proposal: DDPM's variance beta in place of btilde.
    expected = [scipy.stats.multivariate_normal(np.sqrt(alpha) * xn, beta).logpdf(xi)
                - scipy.stats.multivariate_normal(m, beta).logpdf(xn)
                for xi, xn, m in zip(x, x_new, mean)]
    got = weights.reverse_proposal_correction(jnp.asarray(x), jnp.asarray(grad),
                                              jnp.asarray(x_new), jnp.int32(t), schedule)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-3)


def test_fkc_increment_of_two_factors_is_beta_times_their_inner_product():
    s1, s2 = jnp.asarray([[1.0, 2.0]]), jnp.asarray([[3.0, -1.0]])
    got = weights.fkc_increment([s1, s2], jnp.asarray([1.0, 1.0]), 0.1)
    np.testing.assert_allclose(np.asarray(got), [0.1 * (3.0 - 2.0)], rtol=1e-6)


def test_reverse_proposal_smc_estimates_log_z_of_a_gaussian_product():
    """The reverse step as the proposal, weighted exactly, on a 2D Gaussian product where
    the summed-score step is measurably wrong: log Z and the moments come out right.
    Dropping the proposal correction or the target ratio fails it."""
    schedule = schedules.get("linear", 400)
    basis = so.random_basis(2, 2, seed=2)
    first = so.subspace_mixture(basis, [[1.0, 0.0]], 0.8, schedule)
    second = so.subspace_mixture(basis, [[-1.0, 0.5]], 1.0, schedule)
    exact = so.product(first, second)
    sampler = samplers.get("reverse", resample_ess=1.0)
    x, stats = samplers.sample(first * second, sampler, schedule, jax.random.PRNGKey(0), 4000)
    y = np.asarray(x) @ np.asarray(basis)
    assert abs(float(stats.log_normalizer) - so.log_overlap(first, second, 1)) < 0.12
    np.testing.assert_allclose(y.mean(0), np.asarray(exact.mixture.means)[0], atol=0.05)
    np.testing.assert_allclose(y.var(0), np.diag(np.asarray(exact.mixture.covs)[0]), rtol=0.1)
    plain, _ = samplers.sample(first * second, samplers.get("reverse"), schedule,
                               jax.random.PRNGKey(0), 4000)
    plain_var = (np.asarray(plain) @ np.asarray(basis)).var(0)
    assert np.max(np.abs(plain_var / np.diag(np.asarray(exact.mixture.covs)[0]) - 1)) > 0.15


@pytest.mark.parametrize("target", ["product", "guided"])
def test_adapted_mala_smc_is_exact_at_dimension_64(target):
    """Mode weights at the exact-vs-exact floor, both variances and log Z right at d = 64,
    where reverse diffusion and RRR's settings give half the background variance."""
    schedule, targets = _targets(64)
    first, second = targets[target]
    sampler = samplers.get("mala", steps_per_level=5, step=0.01, adapt=0.6, resample_ess=0.5,
                           matched_reference=True)
    x, stats = samplers.sample(first * second, sampler, schedule, jax.random.PRNGKey(0), CHAINS)
    tv_ratio, structured, background = _errors(first, second, np.asarray(x), stats, CHAINS)
    assert tv_ratio < 2.0
    assert 0.9 < structured < 1.1
    assert target == "guided" or 0.95 < background < 1.05
    assert target == "product" or 0.95 < background < 1.05  # the likelihood is flat there
    assert abs(float(stats.log_normalizer) - so.log_overlap(first, second, 1)) < 0.3


@pytest.mark.parametrize("name, goal", [("mala", 0.6), ("hmc", 0.7)])
def test_adaptation_reaches_its_target_acceptance(name, goal):
    schedule, targets = _targets(64)
    first, second = targets["product"]
    # Started 100x too small, the step must grow to the target within the run.
    sampler = samplers.get(name, steps_per_level=3, leapfrog=2, step=1e-4, adapt=goal)
    _, stats = samplers.sample(first * second, sampler, schedule, jax.random.PRNGKey(0), 500)
    accept, step = np.asarray(stats.accept), np.asarray(stats.step)  # [t - 1] is level t
    assert abs(np.mean(accept[:80]) - goal) < 0.05  # the 80 levels after the warm-up
    assert np.all(np.isfinite(step)) and step[0] > 10 * 1e-4


def test_fixed_steps_are_recorded_and_unchanged_without_adaptation():
    schedule, targets = _targets(8)
    first, second = targets["product"]
    sampler = samplers.get("mala", steps_per_level=1, step=samplers.StepRule(0.035, 1.0))
    _, stats = samplers.sample(first * second, sampler, schedule, jax.random.PRNGKey(0), 64)
    np.testing.assert_allclose(np.asarray(stats.step), 0.035 * np.asarray(schedule.beta[1:]),
                               rtol=1e-5)


def test_fkc_corrects_the_score_only_product_in_two_dimensions():
    """Feynman-Kac weights move reverse diffusion's product toward the exact one; a wrong
    sign of the increment makes it worse than plain reverse diffusion."""
    schedule, targets = _targets(2, levels=1000)
    first, second = targets["product"]
    runs = {}
    for label, sampler in (("reverse", samplers.get("reverse")),
                           ("fkc", samplers.get("reverse", fkc=True, resample_ess=0.5,
                                                matched_reference=True))):
        x, stats = samplers.sample(first * second, sampler, schedule, jax.random.PRNGKey(0),
                                   2000)
        runs[label] = _errors(first, second, np.asarray(x), stats, 2000)
    assert runs["fkc"][0] < 2.0 < runs["reverse"][0]
    assert abs(runs["fkc"][1] - 1) < 0.5 * abs(runs["reverse"][1] - 1)


def test_matched_reference_scales_to_the_product_at_the_top_level():
    schedule, targets = _targets(16)
    first, second = targets["product"]
    sampler = samplers.get("reverse", matched_reference=True)
    z = jax.random.normal(jax.random.PRNGKey(0), (256, 16))
    from compdiff.samplers import annealed

    x, log_ref = annealed._reference(first * second, schedule, z, True)
    c = float(jnp.sum(x * x) / jnp.sum(z * z))
    assert abs(c - 0.5) < 0.01 and sampler.nfe(LEVELS) == LEVELS + 1
    np.testing.assert_allclose(np.asarray(log_ref), scipy.stats.multivariate_normal(
        np.zeros(16), c).logpdf(np.asarray(x)), rtol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="ula", adapt=0.6), "no acceptance rate"),
    (dict(name="mala", adapt=1.0), "adapt is a target acceptance"),
    (dict(name="mala", fkc=True), "fkc .* is for the reverse sampler"),
    (dict(name="uhmc", resample_ess=0.5), "cannot resample"),
])
def test_bad_options_are_refused_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        samplers.get(**kwargs)


def test_child_parts_are_each_factors_own_score_in_order():
    """FKC reads a product's factor scores from compose.child_parts; a swapped or repeated
    factor would go unseen by the symmetric 2-factor FKC test above."""
    from compdiff import compose

    schedule, targets = _targets(4)
    first, second = targets["product"]
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
    t = jnp.int32(10)
    parts = compose.child_parts(compose.product([first, second], [2.0, -0.5]), x, t,
                                compose.SCORE)
    np.testing.assert_allclose(np.asarray(parts[0]), np.asarray(first.score(x, t)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(parts[1]), np.asarray(second.score(x, t)), rtol=1e-5)
