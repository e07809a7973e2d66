"""The ADM-style UNet on flat images: shapes, per-row independence, the four
parameterizations, the null condition, remat and configuration errors."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compdiff.models import PARAMETERIZATIONS, DiffusionModel, UNet
from compdiff.models.conditioning import Conditions, given
from compdiff.models.diffusion import LinenApply, predict

ENERGY_FORMS = {
    "energy_l2": lambda x, s: 0.5 * jnp.sum(s**2, -1),
    "energy_dae": lambda x, s: 0.5 * jnp.sum((x - s) ** 2, -1),
    "energy_ip": lambda x, s: -jnp.sum(x * s, -1),
}
TINY = dict(image_shape=(8, 8, 3), num_levels=100, channels=8, channel_mult=(1, 2),
            num_res_blocks=1, attention_resolutions=(4,), num_heads=4, num_groups=4)
B = 4
TOL = dict(rtol=1e-5, atol=1e-5)


def random_params(net, seed):
    """Random parameters of ``net``'s shapes, without compiling its init: the
    zero-initialized output kernels would make the network exactly 0."""
    variables = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, net.dim)),
                               jnp.ones(1, jnp.int32))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables["params"])
    rng = np.random.default_rng(seed)  # numpy: no compile per leaf shape

    def fill(path, leaf):
        noise = jnp.asarray(rng.standard_normal(leaf.shape), jnp.float32)
        name = path[-1].key
        if name == "scale":
            return 1.0 + 0.1 * noise
        if name == "bias":
            return 0.1 * noise
        if name == "kernel":
            return noise / math.sqrt(math.prod(leaf.shape[:-1]))
        return noise

    return jax.tree.unflatten(treedef, [fill(p, x) for p, x in leaves])


def build(**overrides):
    net = UNet(**{**TINY, **overrides})
    return net, random_params(net, seed=1)


@pytest.fixture(scope="module")
def uncond():
    return build()


@pytest.fixture(scope="module")
def cond_net():
    return build(cond_dim=2)


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(2), (B, 8 * 8 * 3))


@functools.cache
def jit_apply(net):
    """One compiled forward per network (modules are hashable)."""
    return jax.jit(LinenApply(net))


def test_init_outputs_zero_and_shapes(uncond, x):
    net, params = uncond
    assert net.dim == 192
    fresh = jax.jit(lambda k: net.init(k, x, jnp.ones(1, jnp.int32)))(jax.random.key(0))
    out0 = jit_apply(net)(fresh["params"], x, jnp.ones(B, jnp.int32), None)
    assert out0.shape == (B, 192)
    assert jnp.all(out0 == 0.0)  # zero-initialized output conv

    apply = jit_apply(net)
    per_sample = apply(params, x, jnp.full(B, 7), None)
    single = apply(params, x, jnp.array([7]), None)
    assert per_sample.shape == single.shape == (B, 192)
    assert bool(jnp.all(jnp.isfinite(per_sample))) and float(jnp.abs(per_sample).max()) > 1e-3
    chex.assert_trees_all_close(single, per_sample, **TOL)
    # Levels matter, and each row reads its own level.
    mixed = apply(params, x, jnp.array([7, 3, 7, 3]), None)
    assert not jnp.allclose(mixed[1], per_sample[1], atol=1e-4)
    chex.assert_trees_all_close(mixed[::2], per_sample[::2], **TOL)


def test_rows_are_independent(cond_net, x):
    net, params = cond_net
    apply = jit_apply(net)
    t = jnp.array([3, 5, 7, 9])
    c = Conditions(jax.random.uniform(jax.random.key(3), (B, 2)), jnp.array([1, 0, 1, 1], bool))
    out = apply(params, x, t, c)
    other_x = x.at[1:].set(jax.random.normal(jax.random.key(4), (B - 1, x.shape[1])))
    other_c = Conditions(c.value.at[1:].set(0.7), c.present.at[1:].set(~c.present[1:]))
    out2 = apply(params, other_x, t.at[1:].set(50), other_c)
    chex.assert_trees_all_close(out2[0], out[0], **TOL)
    # The Jacobian of row 0's output in the other rows' inputs is exactly zero.
    jac = jax.jacrev(lambda y: apply(params, y, t, c)[0].sum())(x)
    assert jnp.all(jac[1:] == 0.0) and float(jnp.abs(jac[0]).max()) > 0.0


@pytest.mark.parametrize("form", PARAMETERIZATIONS)
def test_parameterizations(uncond, schedule, x, form):
    net, params = uncond
    apply_fn = LinenApply(net)
    t = jnp.array([1, 5, 20, 60])
    model = DiffusionModel(apply_fn=apply_fn, params=params, schedule=schedule,
                           parameterization=form, dim=net.dim)
    level = 20

    def reference_energy(y):
        # Computed here, independently of predict's one-vjp trick.
        return ENERGY_FORMS[form](y, net.apply({"params": params}, y, t))

    @jax.jit
    def everything(y):
        # One compiled program for every quantity: the test is compile-bound.
        energy, eps_hat = predict(apply_fn, params, form, y, t)
        if form == "eps":
            return energy, eps_hat, apply_fn(params, y, t, None)
        ref_energy = reference_energy(y)
        ref_grad = jax.grad(lambda z: reference_energy(z).sum())(y)
        return (energy, eps_hat, ref_energy, ref_grad, model.log_prob(y, level),
                model.log_prob_and_score(y, level),
                jax.grad(lambda z: model.log_prob(z, level).sum())(y))

    out = everything(x)
    energy, eps_hat = out[:2]
    assert eps_hat.shape == (B, net.dim)
    assert float(jnp.abs(eps_hat).max()) > 1e-3
    if form == "eps":
        assert energy is None
        chex.assert_trees_all_close(eps_hat, out[2], **TOL)
        return
    ref_energy, ref_grad, log_prob, (log_prob2, score), score_ref = out[2:]
    assert energy.shape == (B,)
    chex.assert_trees_all_close(energy, ref_energy, **TOL)
    chex.assert_trees_all_close(eps_hat, ref_grad, **TOL)
    assert log_prob.shape == (B,) and score.shape == (B, net.dim)
    chex.assert_trees_all_close(log_prob, log_prob2, **TOL)
    chex.assert_trees_all_close(score, score_ref, rtol=1e-4, atol=1e-4)


def test_null_condition(cond_net, schedule, x):
    net, params = cond_net
    apply = jit_apply(net)
    t = jnp.full(B, 10)
    v1 = jax.random.uniform(jax.random.key(5), (B, 2))
    v2 = jax.random.uniform(jax.random.key(6), (B, 2))
    absent = jnp.zeros(B, bool)
    off1 = apply(params, x, t, Conditions(v1, absent))
    off2 = apply(params, x, t, Conditions(v2, absent))
    chex.assert_trees_all_close(off1, off2, **TOL)
    chex.assert_trees_all_close(apply(params, x, t, None), off1, **TOL)
    on1 = apply(params, x, t, given(v1))
    on2 = apply(params, x, t, given(v2))
    for i in range(B):
        assert not jnp.allclose(on1[i], on2[i], atol=1e-4)
        assert not jnp.allclose(on1[i], off1[i], atol=1e-4)
    # A mixed batch: each row follows its own mask.
    mask = jnp.array([1, 0, 0, 1], bool)
    mixed = apply(params, x, t, Conditions(v1, mask))
    chex.assert_trees_all_close(mixed, jnp.where(mask[:, None], on1, off1), **TOL)
    # A raw array is the ApplyFn contract's "every condition present".
    chex.assert_trees_all_close(apply(params, x, t, v1), on1, **TOL)
    # One condition [c] (and the null condition as a scalar mask) broadcast over the batch.
    one = apply(params, x, t, given(v1[0]))
    chex.assert_trees_all_close(one[0], on1[0], **TOL)
    null = apply(params, x, t, Conditions(v1[0], jnp.zeros((), bool)))
    chex.assert_trees_all_close(null, off1, **TOL)

    # Through DiffusionModel.condition / .unconditional (a scalar level: t [1]).
    model = DiffusionModel(apply_fn=LinenApply(net), params=params, schedule=schedule,
                           parameterization="eps", dim=net.dim, cond_dim=2)
    given_v1, unconditional = model.condition(v1[0]), model.unconditional()
    bound = jax.jit(lambda y: (given_v1.eps_hat(y, 10), unconditional.eps_hat(y, 10)))(x)
    chex.assert_trees_all_close(bound, (one, off1), **TOL)


def test_remat_same_outputs_and_gradients(x):
    # One resolution level (attention at 8, and in the middle) keeps the two
    # double-backward compiles small.
    net, params = build(cond_dim=2, channel_mult=(1,), attention_resolutions=(8,))
    net_remat = net.clone(remat=True)
    assert jax.tree.structure(random_params(net_remat, seed=1)) == jax.tree.structure(params)
    t = jnp.array([2, 4, 6, 8])
    c = Conditions(jax.random.uniform(jax.random.key(7), (B, 2)), jnp.array([1, 0, 1, 0], bool))
    eps = jax.random.normal(jax.random.key(8), x.shape)

    @functools.partial(jax.jit, static_argnums=0)
    def outputs_and_gradients(module, p):
        def loss(p):
            # The energy training loss: a double backward through the network.
            _, eps_hat = predict(LinenApply(module), p, "energy_dae", x, t, c)
            return jnp.mean((eps - eps_hat) ** 2)

        return module.apply({"params": p}, x, t, c), jax.value_and_grad(loss)(p)

    out, (value, grads) = outputs_and_gradients(net, params)
    out_r, (value_r, grads_r) = outputs_and_gradients(net_remat, params)
    chex.assert_trees_all_close(out_r, out, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(value_r, value, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(grads_r, grads, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(grads["conv_in"]["kernel"]).max()) > 0.0


@pytest.mark.parametrize("overrides, field", [
    (dict(image_shape=(6, 8, 3), channel_mult=(1, 2, 2)), "channel_mult"),
    (dict(image_shape=(8, 8)), "image_shape"),
    (dict(channel_mult=()), "channel_mult"),
    (dict(channel_mult=(1, 0)), "channel_mult"),
    (dict(channels=0), "channels"),
    (dict(num_res_blocks=0), "num_res_blocks"),
    (dict(num_levels=0), "num_levels"),
    (dict(cond_dim=-1), "cond_dim"),
    (dict(num_groups=0), "num_groups"),
    (dict(attention_resolutions=(3,)), "attention_resolutions"),
    (dict(num_heads=3), "num_heads"),
    (dict(cond_dim=2, cond_shift=(0.0,), cond_scale=(1.0,)), "cond_shift"),
    (dict(cond_dim=2, cond_shift=(0.0, 0.0), cond_scale=()), "cond_shift"),
    (dict(cond_dim=2, cond_shift=(0.0, 0.0), cond_scale=(1.0, 0.0)), "cond_scale"),
])
def test_bad_settings(overrides, field):
    with pytest.raises(ValueError, match=field):
        UNet(**{**TINY, **overrides})


def test_bad_inputs(uncond, cond_net, x):
    net, params = uncond
    cnet, cparams = cond_net
    t = jnp.ones(1, jnp.int32)
    with pytest.raises(ValueError, match=r"x must be .*192.*\(4, 191\)"):
        net.apply({"params": params}, x[:, :-1], t)
    with pytest.raises(ValueError, match="x must be"):
        net.apply({"params": params}, x.reshape(B, 8, 8, 3), t)
    with pytest.raises(ValueError, match="t must hold"):
        net.apply({"params": params}, x, jnp.ones(3, jnp.int32))
    with pytest.raises(ValueError, match="cond_dim=0"):
        net.apply({"params": params}, x, t, given(jnp.zeros((B, 2))))
    with pytest.raises(ValueError, match="cond_dim=2"):
        cnet.apply({"params": cparams}, x, t, given(jnp.zeros((B, 3))))
    with pytest.raises(ValueError, match="cond_dim=2"):
        cnet.apply({"params": cparams}, x, t, jnp.zeros((B, 3)))
    with pytest.raises(ValueError, match="cond must be"):
        cnet.apply({"params": cparams}, x, t, jnp.zeros((B, 1, 2)))


def test_paper_architecture_builds():
    """RRR's 64x64 CLEVR-sized network, shape-checked only (no real compute)."""
    net = UNet(image_shape=(64, 64, 3), num_levels=100, channels=128, channel_mult=(1, 2, 3, 4),
               num_res_blocks=3, attention_resolutions=(16, 8), cond_dim=2)
    x = jax.ShapeDtypeStruct((2, net.dim), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.int32)
    c = Conditions(jax.ShapeDtypeStruct((2, 2), jnp.float32), jax.ShapeDtypeStruct((2,), bool))
    variables = jax.eval_shape(net.init, jax.random.key(0), x, t, c)
    out = jax.eval_shape(net.apply, variables, x, t, c)
    assert out.shape == (2, 64 * 64 * 3)
    count = sum(p.size for p in jax.tree.leaves(variables["params"]))
    print(f"paper UNet parameters: {count}")
    assert 1e8 < count < 2e8


def test_position_map_channel_reads_the_position_and_ignores_null_values(x):
    net, params = build(cond_dim=2, position_map=0.1)
    apply = jit_apply(net)
    t = jnp.full((B,), 7, jnp.int32)
    left = given(jnp.tile(jnp.array([[0.2, 0.5]]), (B, 1)))
    right = given(jnp.tile(jnp.array([[0.8, 0.5]]), (B, 1)))
    assert not np.allclose(apply(params, x, t, left), apply(params, x, t, right))
    # The bump alone moves the output: zero the embedding path's dependence on the value.
    no_embed = jax.tree.map(lambda p: p, params)
    no_embed["cond_in"]["kernel"] = jnp.zeros_like(params["cond_in"]["kernel"])
    assert not np.allclose(apply(no_embed, x, t, left), apply(no_embed, x, t, right))
    absent = left.replace(present=jnp.zeros(B, bool))
    np.testing.assert_array_equal(apply(params, x, t, absent),
                                  apply(params, x, t, right.replace(present=jnp.zeros(B, bool))))
    with pytest.raises(ValueError, match="position_map"):
        build(cond_dim=0, position_map=0.1)


def test_standardized_conditions_are_the_plain_network_on_standardized_values(cond_net, x):
    net, params = cond_net
    shift, scale = (0.3, -0.2), (0.05, 2.0)
    standardizing = net.clone(cond_shift=shift, cond_scale=scale)
    t = jnp.full((B,), 7, jnp.int32)
    value = jax.random.uniform(jax.random.key(9), (B, 2))
    mask = jnp.array([1, 0, 1, 1], bool)
    expected = jit_apply(net)(params, x, t, Conditions((value - jnp.array(shift))
                                                       / jnp.array(scale), mask))
    chex.assert_trees_all_close(jit_apply(standardizing)(params, x, t, Conditions(value, mask)),
                                expected, **TOL)
    assert not np.allclose(jit_apply(net)(params, x, t, given(value)), expected)
