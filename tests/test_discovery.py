"""Du & Kaelbling Fig. 14 (discovery): the E-step on exact densities, scores, end to end."""

import json
import os

import jax
import numpy as np
import pytest

from compdiff import oracles, schedules
from compdiff.experiments import common
from compdiff.experiments import discovery as disc
from configs.experiments import discovery as disc_config

SCHEDULE = schedules.get("linear", 20)
KEY = jax.random.PRNGKey(0)


def _two_gaussians(n: int = 60, dim: int = 4):
    """Data from two well-separated Gaussians, their exact densities, the true assignment."""
    mean = np.zeros(dim, np.float32)
    mean[0] = 0.6
    comps = [oracles.gaussian_mixture(mean[None], 0.15, SCHEDULE, name="a"),
             oracles.gaussian_mixture(-mean[None], 0.15, SCHEDULE, name="b")]
    x = np.concatenate([np.asarray(c.sample(jax.random.fold_in(KEY, i), n))
                        for i, c in enumerate(comps)])
    return comps, x, np.repeat([0, 1], n)


def _nll(comps, x, weighting="elbo"):
    levels = disc.estep_levels(SCHEDULE, 8)
    weights = disc.level_weights(SCHEDULE, levels, weighting)
    return disc.denoising_nll(comps, x, SCHEDULE, levels, weights, 2, KEY)


def test_responsibilities_recover_exact_components():
    comps, x, truth = _two_gaussians()
    nll = _nll(comps, x)
    assert nll.shape == (2, len(x)) and np.all(np.isfinite(nll))
    for log_pi in (np.log([0.5, 0.5]), np.log([0.8, 0.2])):
        for temperature in (1.0, 10.0):
            r = disc.responsibilities(nll, log_pi, temperature)
            np.testing.assert_allclose(r.sum(1), 1.0, atol=1e-9)
            assert np.all(r >= 0)
            np.testing.assert_array_equal(r.argmax(1), truth)
    # the uniform weighting orders the components the same way
    np.testing.assert_array_equal(
        disc.responsibilities(_nll(comps, x, "uniform"), np.log([0.5, 0.5]), 1.0).argmax(1),
        truth)


def test_elbo_estimate_tracks_exact_log_density_differences():
    """With exact scores the ELBO estimate's paired difference between the components
    follows the exact ``log p_b - log p_a`` (up to the decoder term it leaves out)."""
    comps, x, _ = _two_gaussians(n=40)
    nll = _nll(comps, x)
    exact = np.asarray(comps[1].log_prob(x, 0) - comps[0].log_prob(x, 0))
    corr = np.corrcoef(nll[0] - nll[1], exact)[0, 1]
    assert corr > 0.9, corr


def test_level_weights():
    schedule = schedules.get("linear", 100)  # (at T = 20 the top beta is clipped to 0.999)
    levels = disc.estep_levels(schedule, 8)
    assert levels.min() >= 2 and levels.max() == schedule.num_levels
    w = disc.level_weights(schedule, levels, "elbo")
    assert np.all(np.isfinite(w)) and np.all(w > 0)
    assert w[0] > w[-1]  # the ELBO weighs low noise levels most
    np.testing.assert_allclose(disc.level_weights(schedule, levels, "uniform").sum(), 1.0)


def test_scores_and_init():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert disc.purity(labels, np.array([2, 2, 0, 0, 1, 1])) == 1.0
    assert disc.nmi(labels, np.array([2, 2, 0, 0, 1, 1])) == pytest.approx(1.0)
    assert disc.purity(labels, np.array([0, 1, 0, 1, 0, 1])) == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-3, 0.1, (20, 2)), rng.normal(3, 0.1, (20, 2))])
    for init in disc.INITS:
        r = disc.initial_responsibilities(x, 2, init, 0.1, rng)
        np.testing.assert_allclose(r.sum(1), 1.0, atol=1e-9)
    r = disc.initial_responsibilities(x, 2, "kmeans++", 0.1, rng)
    assert disc.nmi(np.repeat([0, 1], 20), r.argmax(1)) == pytest.approx(1.0)


@pytest.mark.parametrize("field,value,match", [
    ("classes", (3, 3), "distinct"), ("init", "kmeans+", "init"),
    ("estep.weighting", "snr", "weighting"), ("temperature", 0.0, "temperature")])
def test_bad_config(field, value, match):
    config = disc_config.get_config("tiny")
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=match):
        disc.check_config(config)


def test_tiny_end_to_end(tmp_path):
    config = disc_config.get_config("tiny")
    result = common.run(config, str(tmp_path))
    rounds = sorted({r["round"] for r in result["rows"]})
    assert rounds == list(range(config.rounds + 1))
    assert all(0 <= r["nmi"] <= 1 and 0 < r["purity"] <= 1 for r in result["rows"])
    assert {c["verdict"] for c in result["claims"]} <= {"holds", "fails", "unresolved"}
    assert len(result["claims"]) == 2
    with open(tmp_path / "discovery.json") as f:
        assert json.load(f)["experiment"] == "discovery"
    for name in ("component_0", "component_1", "composed", "discovery_curve"):
        assert os.path.exists(tmp_path / "figures" / f"{name}.png"), name
