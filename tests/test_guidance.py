"""Classifier guidance in the algebra, and the exact oracle case for every sampler.

The exact case: a Gaussian mixture's posterior over its components ``p_t(k | x)``
is exact at every level, so ``gmm * posterior(k)`` is the diffused component ``k``
and ``gmm * posterior(k) ** lam`` has the level-1 target ``p_1(x) p_1(k | x) ** lam``,
normalized on a grid. ``pytest -s`` prints the measured table (docs/guidance.md).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compdiff import compose, exact, guidance, oracles, samplers
from compdiff.evaluation import metrics
from compdiff.models.diffusion import LinenApply

DIM, LEVELS, B = 6, 10, 5


class TinyClassifier(nn.Module):
    """A noise-conditional two-layer classifier (few ops: eager tests stay cheap)."""

    num_outputs: int
    num_levels: int

    @nn.compact
    def __call__(self, x, t=None, cond=None):
        hidden = nn.Dense(8)(x)
        if self.num_levels:
            hidden = hidden * (1.0 + jnp.asarray(t, jnp.float32)[:, None] / self.num_levels)
        return nn.Dense(self.num_outputs)(jnp.tanh(hidden))


@dataclasses.dataclass(frozen=True)
class CountingApply:
    """An ``ApplyFn`` that counts its (eager) calls, as in tests/test_conditional.py."""

    inner: LinenApply
    calls: list = dataclasses.field(default_factory=list, hash=False, compare=False)

    def __call__(self, params, x, t, cond):
        self.calls.append(x.shape[0])
        return self.inner(params, x, t, cond)


def _classifier(num_outputs: int = 3, seed: int = 0, num_levels: int = LEVELS,
                name: str = "clf") -> guidance.Classifier:
    net = TinyClassifier(num_outputs, num_levels)
    params = net.init(jax.random.key(seed), jnp.zeros((1, DIM)), jnp.ones((1,)))["params"]
    return guidance.Classifier(apply_fn=CountingApply(LinenApply(net)), params=params,
                               num_outputs=num_outputs, dim=DIM, num_levels=num_levels,
                               name=name)


def _separately(density: compose.Density) -> compose.Density:
    if isinstance(density, compose.Product):
        return density.replace(groups=())
    return density


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(1), (B, DIM))


@pytest.mark.parametrize("num_outputs", [3, 1])
def test_class_term_is_log_softmax_and_its_score_is_its_gradient(num_outputs, x):
    clf = _classifier(num_outputs)
    t = jnp.int32(4)
    logits = clf.apply_fn.inner(clf.params, x, t.reshape(1), None)
    if num_outputs == 1:  # binary: log p(1) = log sigmoid(l), log p(0) = log sigmoid(-l)
        want = jnp.concatenate([jax.nn.log_sigmoid(-logits), jax.nn.log_sigmoid(logits)], -1)
    else:
        want = jax.nn.log_softmax(logits, -1)
    labels = jnp.array([0, 1, 1, 0, 1])
    for y in (1, labels):
        term = clf.given(y)
        log_p, score = term.log_prob_and_score(x, t)
        np.testing.assert_allclose(log_p, want[jnp.arange(B), jnp.broadcast_to(y, (B,))],
                                   rtol=1e-5, atol=1e-6)
        grad = jax.grad(lambda z, term=term: term.log_prob(z, t).sum())(x)
        np.testing.assert_allclose(score, grad, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(term.score(x, t), grad, rtol=1e-4, atol=1e-6)


def test_classes_of_one_classifier_run_as_one_call_and_equal_separate_terms(x):
    clf, other = _classifier(seed=0), _classifier(seed=1, name="other")
    gmm = oracles.gaussian_mixture(np.zeros((1, DIM)), 1.0, _schedule(LEVELS))
    composed = {
        "classes": clf.given(0) * clf.given(2) ** 0.5 * clf.given(1) ** -1.0,
        "guided": gmm * clf.given(jnp.array([0, 1, 2, 0, 1])) ** 2.0 * clf.given(1) ** -0.5,
        "two classifiers": gmm * clf.given(0) * other.given(1) * clf.given(2) * other.given(2),
    }
    for name, density in composed.items():
        leaves = [c for c in density.children if isinstance(c, guidance.ClassTerm)]
        networks = {id(c.classifier.params) for c in leaves}
        # Per-sample levels where every leaf takes them (the oracle reads one level).
        for t in (jnp.int32(3),) + ((jnp.arange(1, B + 1),) if name == "classes" else ()):
            for c in (clf, other):
                c.apply_fn.calls.clear()
            got = density.log_prob_and_score(x, t)
            # One forward call of each classifier, on the batch of B (not one per class).
            assert clf.apply_fn.calls + other.apply_fn.calls == [B] * len(networks), name
            clf.apply_fn.calls.clear()
            other.apply_fn.calls.clear()
            want = _separately(density).log_prob_and_score(x, t)
            assert len(clf.apply_fn.calls + other.apply_fn.calls) == len(leaves), name
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(density.log_prob(x, t), want[0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(density.score(x, t), want[1], rtol=1e-5, atol=1e-5)
    jitted = jax.jit(lambda d, z: d.log_prob_and_score(z, 2))(composed["guided"], x)
    np.testing.assert_allclose(jitted[1], _separately(composed["guided"]).score(x, 2),
                               rtol=1e-5, atol=1e-5)


def test_classifier_errors_are_one_clear_line(x):
    clf = _classifier()
    with pytest.raises(ValueError, match="class 3 out of range; it has 3 classes"):
        clf.given(3)
    with pytest.raises(ValueError, match="class -1 out of range"):
        clf.given(jnp.array([0, -1]))
    with pytest.raises(ValueError, match="labels must be an int"):
        clf.given(1.5)
    with pytest.raises(ValueError, match="4 labels .one per chain. but a batch of 5"):
        clf.given(jnp.array([0, 1, 2, 0])).log_prob(x, 3)
    with pytest.raises(ValueError, match="clean classifier .num_levels=0.: guidance needs"):
        _classifier(num_levels=0).given(0)
    with pytest.raises(ValueError, match="trained on levels 1..10; it cannot be read at level 11"):
        clf.given(0).score(x, 11)
    with pytest.raises(ValueError, match="class 2 out of range; it has 2 classes"):
        _classifier(num_outputs=1).given(2)
    assert _classifier(num_levels=0).log_probs(x).shape == (B, 3)  # clean: judges samples


# --- the exact oracle case -------------------------------------------------------------------
def _schedule(levels):
    from compdiff import schedules

    return schedules.get("linear", levels)


NUM = 500
LAMBDA = 3.0
SAMPLERS = {
    "reverse": samplers.get("reverse"),
    "ula": samplers.get("ula", steps_per_level=3, step=samplers.StepRule(0.5, 1.0)),
    "uhmc": samplers.get("uhmc", steps_per_level=2, leapfrog=3, step=0.03),
    "mala": samplers.get("mala", steps_per_level=3, step=samplers.StepRule(1.3, 0.5)),
    "hmc": samplers.get("hmc", steps_per_level=2, leapfrog=3, step=0.03),
    "mala+smc": samplers.get("mala", steps_per_level=3, step=samplers.StepRule(1.3, 0.5),
                             resample_ess=0.5),
    "hmc+smc": samplers.get("hmc", steps_per_level=2, leapfrog=3, step=0.03, resample_ess=0.5),
}
METROPOLIS = ("mala", "hmc", "mala+smc", "hmc+smc")


def oracle_pair(schedule) -> oracles.GaussianMixture:
    """Two overlapping Gaussians (std 0.2, 0.5 apart): ``p(0 | x) ** lam`` reshapes component 0."""
    return oracles.gaussian_mixture([[-0.25, 0.0], [0.25, 0.0]], 0.2, schedule, name="pair")


@pytest.fixture(scope="module")
def oracle_runs(schedule):
    """``{lam: (floor, {sampler: mmd})}`` against exact level-1 samples, ``NUM`` chains each.

    ``floor``: RMS of the unbiased MMD^2 between independent exact sample sets (3 pairs),
    the estimator's own noise.
    """
    gmm = oracle_pair(schedule)
    out = {}
    for lam in (1.0, LAMBDA):
        target = gmm * gmm.component_posterior(0) ** lam
        grid = exact.on_grid(target, 1, extent=1.2, size=300)
        reference = np.asarray(grid.sample(jax.random.PRNGKey(1), NUM))
        floor = float(np.sqrt(np.mean([metrics.mmd(grid.sample(jax.random.PRNGKey(10 + i), NUM),
                                                   reference) ** 2 for i in range(3)])))
        names = SAMPLERS if lam == 1.0 else ("reverse", *METROPOLIS)
        mmds = {}
        for name in names:
            x, _ = samplers.sample(target, SAMPLERS[name], schedule, jax.random.PRNGKey(0), NUM,
                                   denoise=False)
            mmds[name] = metrics.mmd(x, reference)
        out[lam] = (floor, mmds)
        print(f"\nlam={lam:g}: MMD^2 floor {floor:.1e}; "
              + ", ".join(f"{k} {v:.1e}" for k, v in mmds.items()))
    return out


def test_posterior_at_scale_one_is_the_diffused_component(schedule):
    gmm = oracle_pair(schedule)
    component = oracles.gaussian_mixture([[-0.25, 0.0]], 0.2, schedule)
    x = jax.random.normal(jax.random.key(2), (6, 2))
    for t in (1, 40, 100):
        log_p, score = (gmm * gmm.component_posterior(0)).log_prob_and_score(x, t)
        want_log_p, want_score = component.log_prob_and_score(x, t)
        np.testing.assert_allclose(log_p - want_log_p, np.log(0.5), atol=1e-5)  # w_0 N_0,t
        np.testing.assert_allclose(score, want_score, atol=1e-4)
    both = gmm.component_posterior(0) * gmm.component_posterior(1)
    assert both.groups == ((0, 1),)  # one evaluation of the mixture's components


# Reverse diffusion and ULA are biased here by their discretization alone (measured
# MMD^2 at NUM = 500: 1.4e-2 and 2.6e-2; reverse diffusion at 100 levels under-disperses
# a std-0.2 Gaussian): they are bounded just above that. Every other sampler, U-HMC
# included, within 3x the exact-vs-exact floor.
UNADJUSTED_BIAS = {"reverse": 0.03, "ula": 0.04}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_samples_the_component_at_scale_one(name, oracle_runs):
    floor, mmds = oracle_runs[1.0]
    bound = UNADJUSTED_BIAS.get(name, 3 * floor)
    assert mmds[name] < bound, f"{name}: MMD^2 {mmds[name]:.2e} >= {bound:.2e}"


def test_metropolis_samplers_reach_the_sharpened_target_where_reverse_does_not(oracle_runs):
    floor, mmds = oracle_runs[LAMBDA]
    for name in METROPOLIS:
        assert mmds[name] < 3 * floor, f"{name}: MMD^2 {mmds[name]:.2e} >= 3 x {floor:.1e}"
    # Reverse diffusion misses it, and not by its discretization error alone (its MMD^2 on
    # the component itself, scale 1): the guided score is not the diffused target's score.
    assert mmds["reverse"] > max(3 * floor, 3 * oracle_runs[1.0][1]["reverse"])
