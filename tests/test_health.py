"""Diverged chains are counted and reported, not returned silently as answers."""

import logging

import jax
import numpy as np

from compdiff import oracles, samplers


def _disjoint_boxes(schedule):
    left = oracles.box([-1.0, -0.5], [-0.4, 0.5], schedule, name="left")
    right = oracles.box([0.4, -0.5], [1.0, 0.5], schedule, name="right")
    return left, right


def test_ula_divergence_on_disjoint_boxes_is_counted_and_warned(schedule, caplog):
    """The 2D table's ULA step (0.002) on a product of disjoint boxes: the chains fly off."""
    left, right = _disjoint_boxes(schedule)
    ula = samplers.get("ula", steps_per_level=10, step=0.002)
    with caplog.at_level(logging.WARNING):
        x, stats = samplers.sample(left * right, ula, schedule, jax.random.PRNGKey(0), 500,
                                   denoise=False)
    bad = np.asarray(stats.escaped) + np.asarray(stats.nonfinite)
    assert stats.diverged > 250 and bad.max() > 250
    assert stats.diverged == np.sum(~np.all(np.abs(np.asarray(x)) <= 100, -1))
    lines = [r.getMessage() for r in caplog.records if "diverged" in r.getMessage()]
    assert len(lines) == 1 and "ula: chains diverged" in lines[0]


def test_uhmc_nan_samples_are_counted(schedule, caplog):
    left, right = _disjoint_boxes(schedule)
    uhmc = samplers.get("uhmc", steps_per_level=3, leapfrog=3, step=0.3)
    with caplog.at_level(logging.WARNING):
        x, stats = samplers.sample(left * right, uhmc, schedule, jax.random.PRNGKey(0), 500,
                                   denoise=False)
    nonfinite = int(np.sum(~np.all(np.isfinite(np.asarray(x)), -1)))
    assert nonfinite > 0 and int(stats.nonfinite[0]) == nonfinite
    assert any("diverged" in r.getMessage() for r in caplog.records)


def test_a_healthy_run_reports_no_divergence_and_level_one_acceptance(schedule, caplog):
    ring = oracles.gaussian_mixture([[0.5, 0.0], [-0.5, 0.0]], 0.05, schedule)
    mala = samplers.get("mala", steps_per_level=4, step=samplers.StepRule(1.3, 0.5))
    with caplog.at_level(logging.WARNING):
        _, stats = samplers.sample(ring, mala, schedule, jax.random.PRNGKey(0), 256)
    summary = stats.summary()
    assert stats.diverged == 0 and summary["max_diverged"] == 0
    assert not any("diverged" in r.getMessage() for r in caplog.records)
    assert summary["accept_level1"] == float(stats.accept[0])
    assert 0 < summary["accept_level1"] < summary["accept_mean"] <= 1
    assert 0 < summary["ess_level1"] <= 1
