"""Constraint composition: lifted pair factors, the relations, and the experiment at a tiny
size."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from compdiff import compose, factors
from compdiff.experiments import common, constraints
from configs.experiments import constraints as constraints_config


def _pair_log_density(shift):
    """An explicit non-separable log-density over a 4D pair, differentiable in x."""
    def fn(params, x, t):
        a, b = x[:, :2], x[:, 2:]
        return (-jnp.sum((a - b - params) ** 2, -1) + jnp.sin(3 * a[:, 0]) * b[:, 1]
                - 0.1 * jnp.asarray(t, jnp.float32))
    return compose.LogLikelihood(fn=fn, params=jnp.asarray(shift, jnp.float32), dim=4,
                                 name=f"pair{shift}")


EDGES = [("a", 0, 1), ("a", 2, 0), ("a", 1, 2), ("b", 0, 2)]


def _explicit(x, t, inner):
    """``sum_c log f_c(x[idx_c])`` written out by hand."""
    total = 0.0
    for name, i, j in EDGES:
        total = total + inner[name].fn(inner[name].params, x[:, factors.object_coords(i, j)], t)
    return total


@pytest.mark.parametrize("grouped", [True, False])
def test_lifted_product_is_the_sum_of_pair_terms_on_their_coordinates(grouped):
    inner = {"a": _pair_log_density([0.3, -0.2]), "b": _pair_log_density([-0.5, 0.1])}
    graph = factors.factor_graph([(inner[r], factors.object_coords(i, j)) for r, i, j in EDGES],
                                 6)
    assert graph.groups == ((0, 1, 2),)  # the three factors of "a" share one call
    if not grouped:
        graph = graph.replace(groups=())
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 6))
    t = jnp.int32(3)
    want_lp = _explicit(x, t, inner)
    want_score = jax.grad(lambda y: jnp.sum(_explicit(y, t, inner)))(x)
    np.testing.assert_allclose(graph.log_prob(x, t), want_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(graph.score(x, t), want_score, rtol=1e-5, atol=1e-5)
    lp, score = jax.jit(lambda g, y: g.log_prob_and_score(y, t))(graph, x)  # coords traced
    np.testing.assert_allclose(lp, want_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(score, want_score, rtol=1e-5, atol=1e-5)
    per_sample_t = jnp.arange(5)
    np.testing.assert_allclose(graph.score(x, per_sample_t),
                               jax.grad(lambda y: jnp.sum(_explicit(y, per_sample_t, inner)))(x),
                               rtol=1e-5, atol=1e-5)


def test_lift_refuses_bad_coordinates():
    inner = _pair_log_density([0.0, 0.0])
    with pytest.raises(ValueError, match="over R\\^4 but 3"):
        factors.lift(inner, (0, 1, 2), 6)
    with pytest.raises(ValueError, match="distinct"):
        factors.lift(inner, (0, 1, 1, 2), 6)
    with pytest.raises(ValueError, match="belong to no factor"):
        factors.factor_graph([(inner, (0, 1, 2, 3))], 6)


def test_relations_and_wilson():
    geometry = ml_collections.ConfigDict(dict(object_radius=0.1, near_radius=0.5, margin=0.1))
    a, b = np.array([[0.0, 0.0]]), np.array([[0.3, 0.0]])
    assert constraints.holds("left_of", a, b, geometry)[0]
    assert not constraints.holds("left_of", b, a, geometry)[0]
    assert constraints.holds("near", a, b, geometry)[0]
    assert constraints.holds("not_overlapping", a, b, geometry)[0]
    assert not constraints.holds("not_overlapping", a, a + 0.05, geometry)[0]
    rng = np.random.default_rng(0)
    for relation in constraints.RELATIONS:
        x = constraints.relation_data(relation, 50, geometry, rng)
        assert x.shape == (50, 4) and constraints.holds(relation, x[:, :2], x[:, 2:],
                                                        geometry).all()
    edges = constraints.random_graph(4, geometry, rng, 2000)
    assert sum(e[0] == "not_overlapping" for e in edges) == 6 and len(edges) == 9
    low, high = constraints.wilson(8, 10)
    assert 0.44 < low < 0.8 < high < 0.97  # Wilson for 8/10: [0.490, 0.943]
    with pytest.raises(ValueError, match="unknown relation"):
        constraints.holds("above", a, b, geometry)


def test_config_variants_and_bad_input():
    for name in constraints_config.VARIANTS:
        assert constraints_config.get_config(name).experiment == "constraints"
    with pytest.raises(ValueError, match="unknown constraints variant"):
        constraints_config.get_config("huge")
    config = constraints_config.get_config("tiny")
    config.num_objects = (1,)
    with pytest.raises(ValueError, match="num_objects"):
        constraints.run(config, "/nonexistent")


def test_tiny_end_to_end(tmp_path):
    config = constraints_config.get_config("tiny")
    config.num_objects = (3,)
    result = common.run(config, str(tmp_path))
    assert {(r["n"], r["row"]) for r in result["rows"]} == {
        (3, s) for s in config.sampler_names}
    for r in result["rows"]:
        assert 0 <= r["satisfied"] <= 1 and r["interval"][0] <= r["satisfied"] <= r["interval"][1]
        assert r["num"] == config.num_samples * config.num_graphs
    assert set(result["model_check"]) == set(constraints.RELATIONS)
    assert len(result["claims"]) == len(config.sampler_names) - 1
    for name in ("satisfaction.png", "arrangements.png"):
        assert os.path.exists(tmp_path / "figures" / name)
    with open(tmp_path / "constraints.json") as f:
        assert json.load(f)["experiment"] == "constraints"
