"""Oracle densities against Monte Carlo of the forward process, scores against autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from compdiff import oracles
from compdiff.data import toy2d

LEVELS = [1, 5, 20, 60, 100]


def _mc_log_density(density, x, t, schedule, num=200_000):
    """``log E_{x0}[N(x; sqrt(abar) x0, sigma^2 I)]`` with exact level-0 samples x0."""
    x0 = density.sample(jax.random.PRNGKey(0), num)
    mean = jnp.sqrt(schedule.abar[t]) * x0
    sigma = schedule.sigma[t]
    sq = jnp.sum((x[:, None] - mean[None]) ** 2, -1)
    log_kernel = -sq / (2 * sigma**2) - x.shape[1] * jnp.log(jnp.sqrt(2 * jnp.pi) * sigma)
    return logsumexp(log_kernel, axis=1) - jnp.log(num)


@pytest.mark.parametrize("name", ["ring", "bar", "big_box"])
@pytest.mark.parametrize("t", [5, 20, 100])
def test_diffused_density_matches_forward_process(name, t, schedule):
    density = toy2d.get(name, schedule)
    # Points where the level-t density is appreciable, so MC error is small.
    x = oracles.diffuse(jax.random.PRNGKey(1), density.sample(jax.random.PRNGKey(2), 16), t,
                        schedule)
    exact = density.log_prob(x, t)
    mc = _mc_log_density(density, x, t, schedule)
    np.testing.assert_allclose(exact, mc, atol=0.05)


def test_full_covariance_mixture_matches_forward_process(skewed_gmm, schedule):
    x = oracles.diffuse(jax.random.PRNGKey(1), skewed_gmm.sample(jax.random.PRNGKey(2), 16), 10,
                        schedule)
    np.testing.assert_allclose(skewed_gmm.log_prob(x, 10),
                               _mc_log_density(skewed_gmm, x, 10, schedule), atol=0.05)


@pytest.mark.parametrize("name", ["ring", "left_bar", "small_box", "skewed"])
@pytest.mark.parametrize("t", LEVELS)
def test_score_is_gradient_of_log_density(name, t, schedule, skewed_gmm):
    density = skewed_gmm if name == "skewed" else toy2d.get(name, schedule)
    x = 0.8 * jax.random.normal(jax.random.PRNGKey(3), (64, 2))
    log_p, score = density.log_prob_and_score(x, t)
    autodiff = jax.grad(lambda y: density.log_prob(y, t).sum())(x)
    np.testing.assert_allclose(log_p, density.log_prob(x, t), rtol=1e-6)
    scale = float(jnp.abs(autodiff).max())
    np.testing.assert_allclose(score, autodiff, rtol=2e-3, atol=2e-3 * scale)


def test_box_is_finite_far_outside(schedule):
    box = toy2d.get("bar", schedule)
    x = jnp.array([[5.0, 0.0], [0.0, -9.0], [-7.0, 7.0]])
    log_p, score = box.log_prob_and_score(x, 1)
    assert np.all(np.isfinite(log_p)) and np.all(np.isfinite(score))
    assert np.all(np.asarray(score) * np.sign(np.asarray(x)) <= 0)  # pulls back to the box


def test_gmm_product_is_the_normalized_pointwise_product(schedule):
    a = oracles.gaussian_mixture([[0.0, 0.0], [1.0, 0.5]], [0.3, 0.2], schedule, [0.4, 0.6])
    b = oracles.gaussian_mixture([[0.5, 0.0]], [[[0.2, 0.05], [0.05, 0.1]]], schedule)
    prod = oracles.gmm_product(a, b)
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 2))
    ratio = prod.log_prob(x, 0) - a.log_prob(x, 0) - b.log_prob(x, 0)
    np.testing.assert_allclose(ratio, ratio[0], atol=1e-4)  # proportional
    grid = np.stack(np.meshgrid(*[np.linspace(-3, 4, 400)] * 2, indexing="ij"), -1).reshape(-1, 2)
    mass = np.exp(np.asarray(prod.log_prob(jnp.asarray(grid, jnp.float32), 0))).sum()
    np.testing.assert_allclose(mass * (7 / 399) ** 2, 1.0, atol=2e-2)  # normalized


def test_exact_level0_samples_have_the_right_moments(schedule, skewed_gmm):
    x = np.asarray(skewed_gmm.sample(jax.random.PRNGKey(0), 100_000))
    w = np.exp(np.asarray(skewed_gmm.log_weights))
    mean = w @ np.asarray(skewed_gmm.means)
    np.testing.assert_allclose(x.mean(0), mean, atol=0.01)
    box = x = np.asarray(toy2d.get("right_bar", schedule).sample(jax.random.PRNGKey(0), 10_000))
    assert box[:, 0].min() >= 0.1 and box[:, 0].max() <= 0.3 and abs(box[:, 1].mean()) < 0.03
