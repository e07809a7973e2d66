"""The residual MLP and the eps / energy parameterizations as densities."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from compdiff import compose
from compdiff.models import DiffusionModel, ResidualMLP
from compdiff.models.diffusion import LinenApply, predict
from compdiff.models.mlp import sinusoidal_embedding
from compdiff.training import tasks
from configs.models import toy2d as toy2d_config

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


# --- architecture options: widen and norm -------------------------------------------------
def _reference_default_network(params, x, t):
    """The network before ``widen`` / ``norm`` existed, written out (sinusoidal time path)."""
    def dense(name, h):
        return h @ params[name]["kernel"] + params[name]["bias"]

    hidden = params["input"]["kernel"].shape[1]
    emb = dense("time_out", jax.nn.swish(dense("time_proj", sinusoidal_embedding(t, hidden))))
    h = dense("input", x)
    blocks = sum(name.endswith("_in") and name.startswith("block") for name in params)
    for i in range(blocks):
        r = dense(f"block{i}_in", jax.nn.swish(h)) + dense(f"block{i}_emb", emb)
        h = h + dense(f"block{i}_out", jax.nn.swish(r))
    return dense("output", jax.nn.swish(h))


def _shapes(params):
    return {"/".join(k.key for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def test_default_network_is_unchanged(x):
    """Default config: the parameter tree of every earlier checkpoint, and the same outputs."""
    config = toy2d_config.get_config("dataset=ring,param=energy_dae")
    net = tasks.make_network(config, 2)
    assert (net.widen, net.norm) == (1, "none")
    params = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros(1, jnp.int32))["params"]
    expected = {"input/kernel": (2, 128), "input/bias": (128,),
                "time_proj/kernel": (128, 128), "time_proj/bias": (128,),
                "time_out/kernel": (128, 128), "time_out/bias": (128,),
                "output/kernel": (128, 2), "output/bias": (2,)}
    for i in range(4):
        for layer in ("in", "emb", "out"):
            expected |= {f"block{i}_{layer}/kernel": (128, 128), f"block{i}_{layer}/bias": (128,)}
    assert _shapes(params) == expected
    t = jnp.full(6, T)
    chex.assert_trees_all_close(net.apply({"params": params}, x, t),
                                _reference_default_network(params, x, t), rtol=1e-5, atol=1e-6)
    # A config saved before the fields existed builds the same network.
    old = ml_collections.ConfigDict(config.to_dict())
    del old.model["widen"], old.model["norm"]
    assert tasks.make_network(old, 2) == net


@pytest.mark.parametrize("widen,norm", [(1, "layernorm"), (2, "none"), (2, "layernorm")])
def test_architecture_parameters(widen, norm):
    net = ResidualMLP(dim=2, hidden=16, num_blocks=3, num_levels=20, widen=widen, norm=norm)
    shapes = _shapes(net.init(jax.random.key(0), jnp.zeros((1, 2)),
                              jnp.ones(1, jnp.int32))["params"])
    for i in range(3):
        assert shapes[f"block{i}_in/kernel"] == (16, 16 * widen)
        assert shapes[f"block{i}_emb/kernel"] == (16, 16 * widen)
        assert shapes[f"block{i}_out/kernel"] == (16 * widen, 16)
        norm_shapes = {k: v for k, v in shapes.items() if k.startswith(f"block{i}_norm")}
        assert norm_shapes == ({f"block{i}_norm/scale": (16,), f"block{i}_norm/bias": (16,)}
                               if norm == "layernorm" else {})


@pytest.mark.parametrize("norm", ["none", "layernorm"])
@pytest.mark.parametrize("form", sorted(ENERGY_FORMS))
def test_energy_is_smooth_for_every_norm(schedule, form, norm):
    """Finite energies and gradients, near and far from the data; ``grad_x E`` is
    differentiable (central differences of it match its jvp, the Hessian-vector product);
    the training loss on ``grad_x E`` has finite parameter gradients (the double backward)."""
    net = ResidualMLP(dim=2, hidden=16, num_blocks=2, num_levels=20, widen=2, norm=norm)
    params = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.ones(1, jnp.int32))["params"]
    model = make((net, params), schedule, form)
    x = jnp.concatenate([jax.random.normal(jax.random.key(1), (6, 2)),
                         jnp.array([[0.0, 0.0], [1e-4, -1e-4], [30.0, -40.0]])])
    energy, eps_hat = model.energy_and_eps(x, T)
    assert bool(jnp.all(jnp.isfinite(energy))) and bool(jnp.all(jnp.isfinite(eps_hat)))

    v = jax.random.normal(jax.random.key(2), x.shape)
    # Central differences in float32, away from the origin: with the zero bias init the first
    # LayerNorm sees h = W x, whose feature variance ~ |x|^2, so grad_x E varies on the
    # length scale |x| (steep, though smooth, near x = 0; see compdiff.models.mlp).
    xs, vs = x[:6], v[:6]
    hvp = jax.jvp(lambda y: model.eps_hat(y, T), (xs,), (vs,))[1]
    step = 1e-3
    fd = (model.eps_hat(xs + step * vs, T) - model.eps_hat(xs - step * vs, T)) / (2 * step)
    assert bool(jnp.all(jnp.isfinite(hvp)))
    chex.assert_trees_all_close(fd, hvp, rtol=2e-2, atol=5e-3 * float(jnp.abs(hvp).max()))

    eps = jax.random.normal(jax.random.key(3), x.shape)
    loss = lambda p: jnp.mean((model.replace(params=p).eps_hat(x, T) - eps) ** 2)
    grads = jax.grad(loss)(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    if norm == "layernorm":
        assert float(jnp.abs(grads["block0_norm"]["scale"]).sum()) > 0


@pytest.mark.parametrize("widen,norm,match", [
    (0, "none", r"widen \(config model.widen\) must be an integer >= 1.*got 0"),
    (1.5, "none", "widen.*got 1.5"),
    (True, "none", "widen.*got True"),
    (1, "batchnorm", r"unknown norm \(config model.norm\) 'batchnorm'; known: \['none', "
                     r"'layernorm'\]"),
])
def test_bad_architecture_raises(widen, norm, match):
    with pytest.raises(ValueError, match=match):
        ResidualMLP(dim=2, widen=widen, norm=norm)
    config = toy2d_config.get_config()
    config.model.norm = norm
    try:
        config.model.widen = widen
    except TypeError:  # the config field is typed int: 1.5 is refused on the command line
        assert not isinstance(widen, int)
        return
    with pytest.raises(ValueError, match=match):
        tasks.make_network(config, 2)
