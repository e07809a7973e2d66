"""Conditions of one network compose in one batched call, and equal the separate calls."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compdiff import compose
from compdiff.models.diffusion import DiffusionModel, classifier_free_product
from compdiff.testing import counting_conditional_model

DIM, COND_DIM = 3, 2


def _model(parameterization: str) -> DiffusionModel:
    return counting_conditional_model(DIM, COND_DIM, parameterization, hidden=32, num_blocks=2)


def _separately(density: compose.Density) -> compose.Density:
    """The same composition with every leaf its own network (no shared groups)."""
    if isinstance(density, compose.Product | compose.Mixture):
        return density.replace(children=tuple(_separately(c) for c in density.children),
                               groups=())
    return density


CONDS = [jnp.array([0.2, 0.3]), jnp.array([0.7, 0.1]), jnp.array([0.5, 0.9])]


def _compositions(model: DiffusionModel) -> dict[str, compose.Density]:
    c = [model.condition(v) for v in CONDS]
    out = {"product": c[0] * c[1] * c[2],
           "negation": compose.negation(c[0] * c[1], c[2], alpha=0.5),
           "classifier_free": classifier_free_product(model, CONDS, scale=2.0)}
    if model.has_log_prob:
        out["mixture"] = c[0] + c[1] + c[2]
    return out


@pytest.mark.parametrize("parameterization", ["eps", "energy_dae", "energy_l2"])
def test_shared_conditions_run_as_one_call_and_equal_separate_calls(parameterization):
    model = _model(parameterization)
    calls = model.apply_fn.calls
    x = jax.random.normal(jax.random.key(1), (5, DIM))
    for name, density in _compositions(model).items():
        k = len(density.children)
        assert density.groups == (tuple(range(k)),), name
        for t in (jnp.asarray(4), jnp.arange(1, 6)):
            calls.clear()
            got = (density.log_prob_and_score(x, t) if density.has_log_prob
                   else (None, density.score(x, t)))
            # One network call on the stacked batch (a vjp reuses its forward pass).
            assert calls == [k * 5], (name, calls)
            calls.clear()
            separate = _separately(density)
            want = (separate.log_prob_and_score(x, t) if density.has_log_prob
                    else (None, separate.score(x, t)))
            assert calls == [5] * k, (name, calls)
            np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5, err_msg=name)
            if density.has_log_prob:
                np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(density.log_prob(x, t), want[0], rtol=1e-5,
                                           atol=1e-5)


def test_classifier_free_product_is_the_composable_diffusion_formula():
    model = _model("energy_dae")
    x, t, w = jax.random.normal(jax.random.key(2), (4, DIM)), 3, 1.5
    got = classifier_free_product(model, CONDS[:2], scale=w).score(x, t)
    uncond = model.unconditional().score(x, t)
    want = uncond + w * sum(model.condition(v).score(x, t) - uncond for v in CONDS[:2])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_groups_survive_jit_and_separate_networks_are_not_grouped():
    model, other = _model("energy_dae"), _model("energy_dae")
    a, b = model.condition(CONDS[0]), other.condition(CONDS[1])  # equal values, distinct params
    assert (a * b).groups == ()
    density = a * model.condition(CONDS[1]) * b
    assert density.groups == ((0, 1),)
    x = jax.random.normal(jax.random.key(3), (4, DIM))
    jitted = jax.jit(lambda d, y: d.log_prob_and_score(y, 2))(density, x)
    eager = _separately(density).log_prob_and_score(x, 2)
    np.testing.assert_allclose(jitted[1], eager[1], rtol=1e-5, atol=1e-5)


def test_null_condition_ignores_the_value_and_condition_checks_shapes():
    model = _model("eps")
    x = jax.random.normal(jax.random.key(4), (4, DIM))
    null = model.unconditional()
    moved = null.replace(cond=null.cond.replace(value=jnp.ones(COND_DIM)))
    np.testing.assert_array_equal(null.score(x, 2), moved.score(x, 2))
    assert not np.allclose(model.condition(CONDS[0]).score(x, 2), null.score(x, 2))
    with pytest.raises(ValueError, match="length 2"):
        model.condition(jnp.zeros(3))
    with pytest.raises(ValueError, match="score-only"):
        _ = model.condition(CONDS[0]) + model.condition(CONDS[1])
