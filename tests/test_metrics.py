"""Metrics on cases with known answers."""

import jax
import numpy as np
import pytest

from compdiff import exact, oracles, schedules
from compdiff.data import toy2d
from compdiff.evaluation import metrics

SCHEDULE = schedules.get("linear", 100)


@pytest.fixture(scope="module")
def target():
    # Two well-separated modes, so the GMM fit and the grid are unambiguous.
    gmm = oracles.gaussian_mixture([[-0.5, 0.0], [0.5, 0.0]], 0.05, SCHEDULE)
    return exact.on_grid(gmm, t=1, size=300)


def test_ll_of_exact_samples_matches_minus_entropy(target):
    # At level 1 each mode is N(m, s^2 I) with s^2 = abar_1 0.05^2 + sigma_1^2,
    # and a 50/50 mixture of far-apart modes has entropy log 2 + log(2 pi e s^2).
    s2 = float(SCHEDULE.abar[1]) * 0.05**2 + float(SCHEDULE.sigma[1]) ** 2
    neg_entropy = -(np.log(2.0) + np.log(2 * np.pi * np.e * s2))
    assert metrics.exact_ll(target, jax.random.PRNGKey(0), 4000) == pytest.approx(
        neg_entropy, abs=0.05)


def test_ll_penalizes_misplaced_samples_and_non_finite_ones(target):
    good = np.asarray(target.sample(jax.random.PRNGKey(1), 500))
    assert metrics.ll(good + np.array([0.0, 0.2]), target) < metrics.ll(good, target) - 3
    bad = good.copy()
    bad[3] = np.nan
    assert metrics.ll(bad, target) == -np.inf


def test_mmd_near_zero_for_same_distribution_and_clearly_positive_when_shifted(target):
    x = np.asarray(target.sample(jax.random.PRNGKey(2), 1000))
    y = np.asarray(target.sample(jax.random.PRNGKey(3), 1000))
    same = metrics.mmd(x, y)
    shifted = metrics.mmd(x + np.array([0.05, 0.0]), y)
    assert abs(same) < 5e-3
    assert shifted > 20 * max(abs(same), 1e-4)
    # Putting every sample in one mode is a large discrepancy too.
    assert metrics.mmd(np.abs(x) * np.array([1.0, 1.0]), y) > shifted
    assert metrics.mmd(np.full_like(x, np.inf), y) == np.inf


def test_mmd_unbiased_formula_on_a_tiny_case():
    x, y = np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 0.5], [0.0, 0.0]])
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / 2)
    expected = k(x[0], x[1]) + k(y[0], y[1]) - 2 * np.mean([k(a, b) for a in x for b in y])
    assert metrics.mmd(x, y, bandwidths=(1.0,)) == pytest.approx(expected, rel=1e-9)


def test_gmm_variance_small_for_same_distribution_and_large_for_wider_modes(target):
    x = np.asarray(target.sample(jax.random.PRNGKey(4), 1000))
    y = np.asarray(target.sample(jax.random.PRNGKey(5), 1000))
    same = metrics.gmm_variance(x, y, components=2)
    # Spread each sample twice as far from its mode: variances grow 4x.
    centers = np.where(x[:, :1] > 0, 0.5, -0.5) * np.array([1.0, 0.0])
    wider = metrics.gmm_variance(centers + 2 * (x - centers), y, components=2)
    s2 = float(SCHEDULE.abar[1]) * 0.05**2 + float(SCHEDULE.sigma[1]) ** 2
    assert same < 0.25 * s2  # sampling noise of a variance from 500 points is ~6%
    assert wider == pytest.approx(3 * s2 * np.sqrt(2), rel=0.2)


def test_evaluate_counts_non_finite_samples(target):
    y = np.asarray(target.sample(jax.random.PRNGKey(6), 200))
    x = y.copy()
    x[:2] = np.nan
    out = metrics.evaluate(x, target, y, components=2)
    assert out["nonfinite"] == 2 and out["ll"] == -np.inf and out["mmd"] == np.inf


def test_mode_tv_sees_mode_weights_that_ll_cannot(schedule):
    """All samples in one ring mode: LL as good as exact samples, mode TV 7/8."""
    ring = exact.on_grid(toy2d.get("ring", schedule), 1, extent=1.5, size=300)
    labels, weights = metrics.mode_partition(ring)
    np.testing.assert_allclose(weights / weights.sum(), [1 / 8] * 8, atol=1e-3)
    y = np.asarray(ring.sample(jax.random.PRNGKey(0), 4000))
    one_mode = y[labels[tuple(((y - ring.lows) / ring.cell).astype(int).T)] == 0]
    assert metrics.ll(one_mode, ring) > metrics.ll(y, ring) - 0.1
    assert metrics.mode_tv(y, ring) < 0.04
    assert abs(metrics.mode_tv(one_mode, ring) - 7 / 8) < 1e-6
    outside = np.concatenate([y[:100], np.full((100, 2), 9.0), np.full((1, 2), np.nan)])
    assert metrics.mode_tv(outside, ring) > 0.49  # 101 of 201 samples are nowhere


def test_mode_tv_is_none_for_a_single_mode(schedule):
    blob = exact.on_grid(oracles.gaussian_mixture([[0.0, 0.0]], 0.3, schedule), 1, size=100)
    assert metrics.mode_tv(np.zeros((10, 2)), blob) is None
