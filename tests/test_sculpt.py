"""Compositional Sculpting: operators, both realizations, both classifiers, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compdiff import exact, oracles, samplers, schedules, sculpt, train
from compdiff.compose import Density
from compdiff.data import toy2d
from compdiff.evaluation import metrics
from configs.experiments import sculpt2d as sculpt2d_config


@pytest.fixture(scope="module")
def sched():
    return schedules.get("linear", 40)


@pytest.fixture(scope="module")
def broad(sched):
    """Two mixtures of broad Gaussians sharing the mode at (0.5, 0): smooth enough that
    reverse diffusion with the exact score is accurate on 40 levels."""
    p1 = oracles.gaussian_mixture([[-0.5, 0.0], [0.5, 0.0]], 0.15, sched, name="p1")
    p2 = oracles.gaussian_mixture([[0.5, 0.0], [0.0, 0.6]], 0.15, sched, name="p2")
    return [p1, p2]


def _direct(op_name: str, p1: np.ndarray, p2: np.ndarray, alpha: float) -> np.ndarray:
    """The papers' formulas, written out."""
    return {"harmonic_mean": p1 * p2 / (alpha * p1 + (1 - alpha) * p2),
            "contrast": p1**2 / (alpha * p1 + (1 - alpha) * p2),
            "contrast21": p2**2 / (alpha * p1 + (1 - alpha) * p2),
            "contrast_pow3": p1**3 / (p1 + p2) ** 2}[op_name]


@pytest.mark.parametrize("op_name,alpha", [("harmonic_mean", 0.5), ("harmonic_mean", 0.05),
                                           ("contrast", 0.5), ("contrast", 0.05),
                                           ("contrast21", 0.5), ("contrast_pow3", 0.5)])
def test_level0_target_matches_direct_grid(sched, op_name, alpha):
    bases = [toy2d.get("ring", sched), toy2d.get("left_half_ring", sched)]
    op = sculpt.get(op_name, alpha)
    target = exact.on_grid(sculpt.algebraic(bases, op), 0, extent=1.0, size=200)
    c = sculpt.grid_centers(1.0, 200)
    gx, gy = np.meshgrid(c, c, indexing="ij")
    pts = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1), jnp.float32)
    p1, p2 = (np.exp(np.asarray(b.log_prob(pts, 0), np.float64)) for b in bases)
    with np.errstate(invalid="ignore", divide="ignore"):
        direct = np.nan_to_num(_direct(op_name, p1, p2, alpha))
    direct /= direct.sum()
    mass = np.exp(np.asarray(target.log_mass, np.float64)).ravel()
    assert 0.5 * np.abs(mass - direct).sum() < 1e-4


def test_general_posterior_three_models(sched, broad):
    """``p(x | y1=1, y2=3)`` over three models with weights: eq. (1) written out."""
    p3 = oracles.gaussian_mixture([[0.0, -0.5]], 0.3, sched, name="p3")
    w = (0.2, 0.3, 0.5)
    op = sculpt.posterior((0, 2), 3, mixture_weights=w, obs_weights=(w, (0.6, 0.3, 0.1)))
    x = jax.random.normal(jax.random.PRNGKey(0), (50, 2)) * 0.6
    p = np.stack([np.exp(np.asarray(b.log_prob(x, 0), np.float64)) for b in broad + [p3]], -1)
    mix = p @ np.asarray(w)
    expected = mix * (w[0] * p[:, 0] / mix) * (0.1 * p[:, 2] / (p @ np.asarray([0.6, 0.3, 0.1])))
    got = np.exp(np.asarray(sculpt.algebraic(broad + [p3], op).log_prob(x, 0), np.float64))
    np.testing.assert_allclose(got, expected, rtol=2e-4)


@pytest.mark.parametrize("op", [sculpt.harmonic_mean(), sculpt.contrast(0.05),
                                sculpt.contrast_power(3)], ids=lambda op: op.name)
def test_algebraic_score_is_grad_log_prob(sched, op):
    bases = [toy2d.get("ring", sched), toy2d.get("bar", sched)]
    density = sculpt.algebraic(bases, op)
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 2)) * 0.7
    for t in (1, 5, 30):
        log_p, score = density.log_prob_and_score(x, t)
        grad = jax.grad(lambda y, t=t: jnp.sum(density.log_prob(y, t)))(x)
        np.testing.assert_allclose(np.asarray(log_p), np.asarray(density.log_prob(x, t)),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(score), np.asarray(grad), rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def sched100():
    return schedules.get("linear", 100)


def test_guided_exact_equals_reverse_on_the_composite_oracle(sched100):
    """Away from ``exp(-20)`` overlaps the harmonic mean of ``ring`` and ``left_half_ring``
    is ``left_half_ring / 3``, a Gaussian mixture: the guided chains with the exact
    classifier equal reverse diffusion of that oracle, draw for draw, under one key."""
    op, reverse, key = sculpt.harmonic_mean(), samplers.get("reverse"), jax.random.PRNGKey(4)
    bases = [toy2d.get("ring", sched100), toy2d.get("left_half_ring", sched100)]
    clf = sculpt.exact_classifier(bases, op, sched100)
    x, _ = samplers.sample(sculpt.guided(bases, clf, op), reverse, sched100, key, 200,
                           denoise=False)
    oracle, _ = samplers.sample(bases[1], reverse, sched100, key, 200, denoise=False)
    np.testing.assert_allclose(np.asarray(x), np.asarray(oracle), atol=1e-3)


def test_guided_exact_hits_harmonic_mean_and_swapped_labels_fail(sched100):
    """Reverse diffusion with the exact classifier samples the exact (diffused) harmonic
    mean of a sharp and a broad Gaussian; the classifier with the models' labels swapped
    weighs the broad score where the sharp one belongs, and misses by far more.

    The tolerance is reverse diffusion's own error here (T = 100 ancestral steps
    under-disperse a 0.05-wide mode: MMD^2 ~0.014, std 0.072 vs 0.082; the previous
    test shows the guided chains equal reverse diffusion on an oracle composite), well
    above the exact-vs-exact spread (~0.005 at 500 draws).
    """
    op, num = sculpt.harmonic_mean(), 500
    bases = [oracles.gaussian_mixture([[0.0, 0.0]], 0.05, sched100, name="sharp"),
             oracles.gaussian_mixture([[0.3, 0.0]], 0.4, sched100, name="broad")]
    target = sculpt.diffused_target(bases, op, sched100, 1, extent=2.0, size=300, size0=48)
    reference = np.asarray(target.sample(jax.random.PRNGKey(2), num))
    floor = metrics.mmd(np.asarray(target.sample(jax.random.PRNGKey(3), num)), reference)
    mmds = {}
    for name, clf_bases in (("exact", bases), ("swapped", bases[::-1])):
        clf = sculpt.exact_classifier(clf_bases, op, sched100, size=48)
        x, _ = samplers.sample(sculpt.guided(bases, clf, op), samplers.get("reverse"),
                               sched100, jax.random.PRNGKey(4), num, denoise=False)
        mmds[name] = metrics.mmd(np.asarray(x), reference)
    tol = 0.03
    assert abs(floor) < tol / 3
    assert mmds["exact"] < tol, mmds
    assert mmds["swapped"] > 2 * tol, mmds


def test_classifier_terminal_loss_converges_to_exact_posterior(tmp_path, sched):
    """The sculpt_classifier task of compdiff.train: ``Q(y | x_0)`` approaches
    ``p1 / (p1 + p2)`` on base samples, and the bootstrapped joint head approaches
    the exact ``p(y1, y2 | x_t)``."""
    pair = ("ring", "left_half_ring")  # exact posteriors 1, 1/3 and 2/3, 0
    config = sculpt2d_config.classifier_config(pair, num_levels=sched.num_levels, steps=400)
    train.train(config, str(tmp_path / "clf"))
    clf = sculpt.load_classifier(str(tmp_path / "clf"))
    bases = [toy2d.get(name, sched) for name in pair]
    x = jnp.concatenate([b.sample(jax.random.PRNGKey(i), 300) for i, b in enumerate(bases)])
    log_p = jnp.stack([b.log_prob(x, 0) for b in bases], -1)
    exact_post = jax.nn.softmax(log_p, -1)
    q = jnp.exp(clf.terminal_log_probs(x, jnp.log(jnp.asarray([0.5, 0.5]))))
    assert float(jnp.mean(jnp.abs(q - exact_post))) < 0.03
    ec = sculpt.exact_classifier(bases, sculpt.harmonic_mean(), sched)
    t = 3
    xt = (jnp.sqrt(sched.abar[t]) * x
          + sched.sigma[t] * jax.random.normal(jax.random.PRNGKey(5), x.shape))
    err = jnp.abs(jnp.exp(ec.log_joint(xt, t)) - jnp.exp(clf.log_joint(xt, t)))
    assert float(jnp.mean(err)) < 0.05


class _ScoreOnly(Density):
    dim, has_log_prob = 2, False

    def describe(self):
        return "eps_model"

    def score(self, x, t):
        return -x


def test_errors(sched, broad):
    with pytest.raises(ValueError, match="score-only: eps_model"):
        sculpt.algebraic([broad[0], _ScoreOnly()], sculpt.contrast())
    with pytest.raises(ValueError, match=r"model indices in 0..1, got \[2\]"):
        sculpt.posterior((0, 2), 2)
    with pytest.raises(ValueError, match="over 2 models, got 3"):
        sculpt.algebraic(broad + broad[:1], sculpt.harmonic_mean())
    with pytest.raises(ValueError, match="alpha must lie in"):
        sculpt.contrast(1.5)
    with pytest.raises(ValueError, match="obs_weights\\[0\\] must equal the mixture weights"):
        sculpt.posterior((0, 1), 2, obs_weights=((0.3, 0.7), (0.5, 0.5)))
    with pytest.raises(ValueError, match="unknown sculpting operator"):
        sculpt.get("intersection")
    guided = sculpt.guided([broad[0], _ScoreOnly()],
                           sculpt.exact_classifier(broad, sculpt.harmonic_mean(), sched, size=24),
                           sculpt.harmonic_mean())
    with pytest.raises(TypeError, match="no tractable log-density"):
        guided.log_prob(jnp.zeros((2, 2)), 1)
    # Metropolis-adjusted samplers refuse the score-only guided composite.
    guided = sculpt.guided(broad, guided.classifier, sculpt.harmonic_mean())
    with pytest.raises(ValueError, match="needs a log-density"):
        samplers.sample(guided, samplers.get("mala"), sched, jax.random.PRNGKey(0), 4)
