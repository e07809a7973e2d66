"""The algebra against its definitions, on oracles."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from compdiff import compose
from compdiff.data import toy2d


def _x():
    return 0.7 * jax.random.normal(jax.random.PRNGKey(0), (32, 2))


def test_operators_build_the_documented_trees(schedule):
    ring, half, bar = (toy2d.get(n, schedule) for n in ("ring", "left_half_ring", "bar"))
    negation = ring / half**0.5
    assert [c.describe() for c in negation.children] == ["ring", "left_half_ring"]
    np.testing.assert_allclose(negation.weights, [1.0, -0.5])
    nested = (ring * bar) ** 2.0 * half
    np.testing.assert_allclose(nested.weights, [2.0, 2.0, 1.0])
    cfg = compose.classifier_free(ring, bar, 3.0)
    np.testing.assert_allclose(cfg.weights, [4.0, -3.0])


def test_product_and_mixture_match_their_formulas(schedule):
    ring, bar = toy2d.get("ring", schedule), toy2d.get("bar", schedule)
    x, t = _x(), 7
    product = compose.product([ring, bar], [1.5, -0.5])
    expected = 1.5 * ring.log_prob(x, t) - 0.5 * bar.log_prob(x, t)
    np.testing.assert_allclose(product.log_prob(x, t), expected, rtol=1e-5)
    mixture = compose.mixture([ring, bar], [1.0, 3.0])
    expected = logsumexp(jnp.stack([ring.log_prob(x, t) + jnp.log(0.25),
                                    bar.log_prob(x, t) + jnp.log(0.75)]), axis=0)
    np.testing.assert_allclose(mixture.log_prob(x, t), expected, rtol=1e-5)
    for density in (product, mixture, compose.mixture([product**0.3, ring])):
        log_p, score = density.log_prob_and_score(x, t)
        autodiff = jax.grad(lambda y, d=density: d.log_prob(y, t).sum())(x)
        np.testing.assert_allclose(score, autodiff, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(density.score(x, t), score, rtol=1e-5, atol=1e-5)


def test_guidance_term_adds_scaled_log_likelihood(schedule):
    ring = toy2d.get("ring", schedule)
    # A "classifier" log p(y = right | x) = log sigmoid(w * x_0), differentiable in x.
    classifier = compose.LogLikelihood(fn=lambda w, x, t: jax.nn.log_sigmoid(w * x[:, 0]),
                                       params=jnp.float32(4.0), dim=2, name="is_right")
    guided = ring * classifier**2.0
    x = _x()
    np.testing.assert_allclose(
        guided.log_prob(x, 3), ring.log_prob(x, 3) + 2.0 * jax.nn.log_sigmoid(4.0 * x[:, 0]),
        rtol=1e-5)
    assert guided.describe() == "(ring^1 * is_right^2)"


def test_compositions_are_pytrees_that_jit_without_retracing(schedule):
    ring, bar = toy2d.get("ring", schedule), toy2d.get("bar", schedule)
    traces = []

    @jax.jit
    def log_prob(density, x):
        traces.append(1)
        return density.log_prob(x, 5)

    log_prob(compose.product([ring, bar], [1.0, 0.5]), _x())
    log_prob(compose.product([ring, bar], [1.0, 0.9]), _x())  # new weights, same structure
    assert len(traces) == 1
