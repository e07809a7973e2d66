"""Du & Kaelbling Figs. 3-4 (data_efficiency): exact data, exact targets, claims, end to end."""

import json
import os

import jax
import numpy as np
import pytest

from compdiff import exact, factorized, oracles, schedules
from compdiff.data import toy2d
from compdiff.experiments import common, paired
from compdiff.experiments import data_efficiency as de
from configs.experiments import data_efficiency as de_config

SCHEDULE = schedules.get("linear", 20)
KEY = jax.random.PRNGKey(0)


def _grid_moments(target: exact.GridTarget) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a grid target from its cell masses (no sampling)."""
    mass = np.exp(np.asarray(target.log_mass, np.float64))
    n = mass.shape[0]
    lows, cell = np.asarray(target.lows)[:, None], np.asarray(target.cell)[:, None]
    c = lows + (np.arange(n)[None] + 0.5) * cell
    pts = np.stack(np.meshgrid(c[0], c[1], indexing="ij"), -1).reshape(-1, 2)
    w = mass.ravel() / mass.sum()
    mean = w @ pts
    return mean, (pts - mean).T @ ((pts - mean) * w[:, None])


def test_truncated_product_is_normalized_and_diffuses_exactly():
    ring, bar = toy2d.get("ring", SCHEDULE), toy2d.get("bar", SCHEDULE)
    product = factorized.exact_product([bar, ring])  # either order
    x0 = np.asarray(product.sample(KEY, 20_000))
    assert np.all(np.abs(x0[:, 0]) <= 0.1) and np.all(np.abs(x0[:, 1]) <= 1.0)
    # ring restricted to the bar: the two modes on the y axis, equal weights
    np.testing.assert_allclose(x0.mean(0), [0.0, 0.0], atol=0.02)
    np.testing.assert_allclose(x0.std(0), [toy2d.RING_STD, 0.5], rtol=0.05)
    for t in (1, 5, 19):
        target = exact.on_grid(product, t, extent=5.0, size=400)
        assert abs(target.log_norm) < 2e-3, (t, target.log_norm)  # a normalized density
    # the level-3 density is the forward diffusion of the exact level-0 samples
    t = 3
    xt = np.asarray(oracles.diffuse(jax.random.PRNGKey(1), x0, t, SCHEDULE), np.float64)
    mean, cov = _grid_moments(exact.on_grid(product, t, extent=2.5, size=300))
    np.testing.assert_allclose(xt.mean(0), mean, atol=0.01)
    np.testing.assert_allclose(np.cov(xt.T), cov, atol=0.01, rtol=0.05)


def test_monolithic_data_are_exact_composition_samples():
    config = de_config.get_config("quick")
    n = 4000
    mix = de.composition_data(config.compositions.mixture, SCHEDULE, n, KEY)
    assert mix["left_bar"].shape == (n, 2) and mix["monolithic"].shape == (2 * n, 2)
    # (U[-0.3,-0.1] + U[0.1,0.3]) / 2 in x, U[-1, 1] in y
    x = mix["monolithic"].astype(np.float64)
    np.testing.assert_allclose(x.mean(0), [0.0, 0.0], atol=0.03)
    np.testing.assert_allclose(np.cov(x.T), np.diag([0.026 / 0.6, 1 / 3]), atol=0.01)
    assert abs(np.mean(x[:, 0] < 0) - 0.5) < 0.03
    stripes = de.composition_data(config.compositions.stripes, SCHEDULE, n, KEY)["monolithic"]
    exact_product = oracles.gmm_product(toy2d.get("h_stripes", SCHEDULE),
                                        toy2d.get("v_stripes", SCHEDULE))
    w = np.exp(np.asarray(exact_product.log_weights, np.float64))
    means, covs = np.asarray(exact_product.means), np.asarray(exact_product.covs)
    mean = w @ means
    cov = np.einsum("k,kij->ij", w, covs + np.einsum("ki,kj->kij", means, means)) - np.outer(
        mean, mean)
    np.testing.assert_allclose(stripes.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(stripes.T.astype(np.float64)), cov, atol=0.01)


def test_slices_never_touch_the_held_out_region():
    gen = de_config.get_config("quick").generalization
    data = de.generalization_data(gen, SCHEDULE, 3000, KEY)
    union = data["monolithic"]
    assert union.shape == (6000, 2) and not de.held_out(union, gen.band).any()
    assert np.all(np.abs(data["slice_h"][:, 1]) <= gen.band)
    assert np.all(np.abs(data["slice_v"][:, 0]) <= gen.band)
    # the axis data are exact samples of the 1D marginals: a third of the mass at each center
    for axis in (data["x_axis"][:, 0], data["y_axis"][:, 0]):
        nearest = np.argmin(np.abs(axis[:, None] - np.asarray(gen.centers)[None]), 1)
        np.testing.assert_allclose(np.bincount(nearest) / len(axis), [1 / 3] * 3, atol=0.03)
    target = exact.on_grid(de.grid_target(gen, SCHEDULE), 1, extent=2.0, size=200)
    assert de.held_out(np.asarray(target.sample(KEY, 4000)), gen.band).mean() == pytest.approx(
        4 / 9, abs=0.03)


def test_coordinate_product_is_the_product_over_axes():
    gen = de_config.get_config("quick").generalization
    axis = oracles.gaussian_mixture(np.asarray(gen.centers)[:, None], gen.std, SCHEDULE)
    joint = factorized.coordinate_product([axis, axis])
    grid = de.grid_target(gen, SCHEDULE)
    x = jax.random.normal(KEY, (64, 2)) * 0.7
    for t in (0, 1, 10):
        np.testing.assert_allclose(joint.log_prob(x, t), grid.log_prob(x, t), rtol=1e-4,
                                   atol=1e-4)
        np.testing.assert_allclose(joint.score(x, t), grid.score(x, t), rtol=1e-3, atol=1e-3)
        log_p, score = joint.log_prob_and_score(x, t)
        np.testing.assert_allclose(score, grid.score(x, t), rtol=1e-3, atol=1e-3)


def test_exact_product_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="no exact product rule"):
        factorized.exact_product([toy2d.get("ring", SCHEDULE),
                                  factorized.coordinate_product([toy2d.get("bar", SCHEDULE)])])
    skewed = oracles.gaussian_mixture([[0.0, 0.0]], np.array([[[1.0, 0.5], [0.5, 1.0]]]),
                                      SCHEDULE)
    with pytest.raises(ValueError, match="diagonal covariances"):
        factorized.exact_product([skewed, toy2d.get("bar", SCHEDULE)])
    with pytest.raises(ValueError, match="do not overlap"):
        factorized.exact_product([toy2d.get("left_bar", SCHEDULE),
                                  toy2d.get("right_bar", SCHEDULE)])


def test_seed_claim_is_a_t_interval_over_seeds():
    claim = de.seed_claim("c", [1.0, 2.0, 3.0])
    # mean 2, s.e. 1/sqrt(3), t(0.975, 2) = 4.303
    assert claim["estimate"] == pytest.approx(2.0)
    assert claim["interval"] == pytest.approx([2 - 2.4843, 2 + 2.4843], abs=1e-3)
    assert claim["p_value"] == pytest.approx(0.0742, abs=1e-3)
    assert claim["verdict"] == "unresolved" and claim["num_pairs"] == 3
    assert de.seed_claim("c", [1.0, 1.1, 0.9, 1.05, 0.95])["verdict"] == "holds"
    assert de.seed_claim("c", [-1.0, -1.1, -0.9])["verdict"] == "fails"
    assert de.seed_claim("c", [1.0]) is None


@pytest.mark.parametrize("field,value,message", [
    ("claim_size", 7, "claim_size 7 is not one of sizes"),
    ("generalization.band", 0.7, "generalization.band must be in"),
    ("samplers_by_op.mixture", ("hmc",), "unknown sampler row 'hmc'"),
    ("sizes", (1, 10), "sizes must be integers >= 2"),
])
def test_bad_config_is_one_clear_error(field, value, message):
    config = de_config.get_config("tiny")
    config.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError, match=message):
        de.check_config(config)
    with pytest.raises(ValueError, match="unknown data_efficiency variant"):
        de_config.get_config("huge")


def test_tiny_end_to_end(tmp_path):
    config = de_config.get_config("tiny")
    config.sizes, config.seeds, config.claim_size = (30,), (0,), 30
    workdir = str(tmp_path)
    result = common.run(config, workdir)
    with open(os.path.join(workdir, "data_efficiency.json")) as f:
        assert json.load(f)["experiment"] == "data_efficiency"
    rows = result["rows"]
    assert {(r["kind"], r["n"], r.get("train_points")) for r in rows} == {
        ("oracle", None, None), ("composed", 30, 30), ("monolithic", 30, 60)}
    assert all(r["status"] == "ok" and r["mmd"] is not None for r in rows)
    mono = np.load(os.path.join(workdir, "data", "mixture", "n30_s0", "monolithic",
                                "points.npz"))["x"]
    assert mono.shape == (60, 2)
    gen = result["generalization"]
    assert gen["training_points_held_out"] == 0
    assert gen["held_out_exact"] == pytest.approx(4 / 9, abs=0.02)
    assert {r["kind"] for r in gen["rows"]} == {"composed", "monolithic"}
    tests = {c["test"] for c in result["claims"]}
    assert tests == {"paired bootstrap", "exact McNemar"}  # one seed: no claims over seeds
    assert all(c["verdict"] in ("holds", "fails", "unresolved") for c in result["claims"])
    for name in ("data_efficiency.png", "generalization.png"):
        assert os.path.getsize(os.path.join(workdir, "figures", name)) > 0
    with open(os.path.join(workdir, "data_efficiency.md")) as f:
        text = f.read()
    assert "| mixture | reverse | composed | 30 | 30 |" in text and "Fig. 3" in text


def test_mcnemar_takes_thousands_of_pairs():
    # Fig. 3 pools 3 seeds x 1000 samples; the old sum(comb) / 2**n overflowed past 1023.
    a = np.r_[np.ones(1500), np.zeros(1500)].astype(bool)
    b = np.r_[np.zeros(1500), np.ones(700), np.zeros(800)].astype(bool)
    p = paired.mcnemar(a, b)
    assert 0.0 < p < 1e-10  # 1500 vs 700 discordant pairs
    assert paired.mcnemar(a[:4], b[:4]) == pytest.approx(0.125)  # 4 of 4 discordant one way
