"""The residual MLP and the eps / energy parameterizations as densities."""

import chex
import jax
import jax.numpy as jnp
import pytest

from compdiff import compose
from compdiff.models import DiffusionModel, ResidualMLP
from compdiff.models.diffusion import LinenApply, predict

ENERGY_FORMS = {
    "energy_l2": lambda x, s: 0.5 * jnp.sum(s**2, -1),
    "energy_dae": lambda x, s: 0.5 * jnp.sum((x - s) ** 2, -1),
    "energy_ip": lambda x, s: -jnp.sum(x * s, -1),
}
T = 7


@pytest.fixture(scope="module")
def net_and_params():
    net = ResidualMLP(dim=2, hidden=16, num_blocks=2, num_levels=20)
    x = jnp.zeros((1, 2))
    return net, net.init(jax.random.key(0), x, jnp.ones(1, jnp.int32))["params"]


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(1), (6, 2))


def make(net_and_params, schedule, parameterization, cond=None):
    net, params = net_and_params
    return DiffusionModel(apply_fn=LinenApply(net), params=params, schedule=schedule,
                          parameterization=parameterization, cond=cond, dim=2,
                          name=parameterization)


@pytest.mark.parametrize("form", sorted(ENERGY_FORMS))
def test_energy_and_eps_match_autodiff(net_and_params, schedule, x, form):
    net, params = net_and_params
    model = make(net_and_params, schedule, form)
    energy, eps_hat = model.energy_and_eps(x, T)

    def reference_energy(y):
        return ENERGY_FORMS[form](y, net.apply({"params": params}, y, jnp.full(6, T)))

    chex.assert_trees_all_close(energy, reference_energy(x), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(eps_hat, jax.grad(lambda y: reference_energy(y).sum())(x),
                                rtol=1e-5, atol=1e-6)
    # The batched vjp must give each row its own gradient.
    rows = jnp.concatenate([model.eps_hat(x[i:i + 1], T) for i in range(len(x))])
    chex.assert_trees_all_close(eps_hat, rows, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", sorted(ENERGY_FORMS))
def test_score_is_gradient_of_log_prob(net_and_params, schedule, x, form):
    model = make(net_and_params, schedule, form)
    sigma = schedule.sigma[T]
    score = model.score(x, T)
    chex.assert_trees_all_close(score, -model.eps_hat(x, T) / sigma, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jax.grad(lambda y: model.log_prob(y, T).sum())(x), score,
                                rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(model.log_prob(x, T), -model.energy_and_eps(x, T)[0] / sigma,
                                rtol=1e-5, atol=1e-6)
    # Traced level, model passed through jit as a pytree.
    log_p, grad = jax.jit(lambda m, y, t: m.log_prob_and_score(y, t))(model, x, jnp.int32(T))
    chex.assert_trees_all_close((log_p, grad), (model.log_prob(x, T), score),
                                rtol=1e-5, atol=1e-6)


def test_per_sample_levels_match_scalar_levels(net_and_params, schedule, x):
    model = make(net_and_params, schedule, "energy_dae")
    t = jnp.arange(1, 7)
    rows = jnp.concatenate([model.score(x[i:i + 1], int(t[i])) for i in range(6)])
    chex.assert_trees_all_close(model.score(x, t), rows, rtol=1e-5, atol=1e-6)
    log_p = jnp.concatenate([model.log_prob(x[i:i + 1], int(t[i])) for i in range(6)])
    chex.assert_trees_all_close(model.log_prob(x, t), log_p, rtol=1e-5)


def test_eps_model_is_score_only(net_and_params, schedule, x):
    net, params = net_and_params
    model = make(net_and_params, schedule, "eps")
    assert not model.has_log_prob
    with pytest.raises(TypeError, match="score-only"):
        model.log_prob(x, T)
    with pytest.raises(ValueError, match="score-only"):
        model.log_prob_and_score(x, T)
    with pytest.raises(ValueError, match="score-only"):
        model.energy_and_eps(x, T)
    s = net.apply({"params": params}, x, jnp.full(6, T))
    chex.assert_trees_all_close(model.score(x, T), -s / schedule.sigma[T], rtol=1e-5, atol=1e-6)


def test_mixture_needs_energy_models(net_and_params, schedule, x):
    eps_model = make(net_and_params, schedule, "eps")
    energy_model = make(net_and_params, schedule, "energy_l2")
    with pytest.raises(ValueError, match="score-only: eps"):
        compose.mixture([energy_model, eps_model])
    with pytest.raises(ValueError, match="score-only"):
        eps_model + energy_model
    assert (energy_model + energy_model).score(x, T).shape == (6, 2)
    # A product of score-only models still has a score.
    chex.assert_trees_all_close((eps_model * eps_model).score(x, T),
                                2 * eps_model.score(x, T), rtol=1e-5, atol=1e-6)


def test_unknown_parameterization(net_and_params, schedule, x):
    with pytest.raises(ValueError, match="unknown parameterization 'energy'.*energy_l2"):
        make(net_and_params, schedule, "energy")
    net, params = net_and_params
    with pytest.raises(ValueError, match="known:"):
        predict(LinenApply(net), params, "score", x, jnp.ones(6, jnp.int32))


@pytest.mark.parametrize("embedding", ["sinusoidal", "learned"])
def test_network_depends_on_level_and_condition(x, embedding):
    net = ResidualMLP(dim=2, hidden=16, num_blocks=2, time_embedding=embedding, num_levels=20)
    cond = jnp.tile(jnp.array([[1.0, 0.0, 0.0]]), (6, 1))
    params = net.init(jax.random.key(0), x, jnp.ones(6, jnp.int32), cond)["params"]
    out = lambda t, c: net.apply({"params": params}, x, jnp.full(6, t), c)
    assert out(3, cond).shape == (6, 2)
    assert not jnp.allclose(out(3, cond), out(15, cond))
    assert not jnp.allclose(out(3, cond), out(3, jnp.roll(cond, 1, axis=-1)))


def test_bound_condition_broadcasts_over_batch(x, schedule):
    net = ResidualMLP(dim=2, hidden=16, num_blocks=2, num_levels=20)
    cond = jnp.array([0.0, 1.0])
    params = net.init(jax.random.key(0), x, jnp.ones(6, jnp.int32), jnp.zeros((6, 2)))["params"]
    one = make((net, params), schedule, "energy_l2", cond=cond)
    tiled = one.replace(cond=jnp.tile(cond, (6, 1)))
    chex.assert_trees_all_close(one.log_prob_and_score(x, T), tiled.log_prob_and_score(x, T))
    assert not jnp.allclose(one.score(x, T), one.replace(cond=1 - cond).score(x, T))


def test_unknown_time_embedding(x):
    net = ResidualMLP(dim=2, time_embedding="fourier")
    with pytest.raises(ValueError, match="unknown time_embedding 'fourier'"):
        net.init(jax.random.key(0), x, jnp.ones(6, jnp.int32))
