"""Bad input fails early with an error that names the problem."""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compdiff import compose, oracles, samplers, schedules
from compdiff.compose import Density
from compdiff.data import toy2d


@flax.struct.dataclass
class ScoreOnly(Density):
    """A score-only leaf, like an eps-parameterized model."""

    dim: int = flax.struct.field(pytree_node=False, default=2)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=False)

    def score(self, x, t):
        return -x

    def describe(self):
        return "eps_model"


def test_unknown_names(schedule):
    with pytest.raises(ValueError, match="unknown sampler 'langevin'.*hmc.*mala"):
        samplers.get("langevin")
    with pytest.raises(ValueError, match="unknown sampler option.*'leapfrogs'"):
        samplers.get("hmc", leapfrogs=3)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedules.get("sigmoid", 100)
    with pytest.raises(ValueError, match="unknown 2D dataset 'moons'"):
        toy2d.get("moons", schedule)


def test_mixture_over_score_only_models_fails_at_construction(schedule):
    with pytest.raises(ValueError, match="mixture needs every component's log-density.*eps_model"):
        compose.mixture([toy2d.get("ring", schedule), ScoreOnly()])
    with pytest.raises(ValueError, match="score-only"):
        _ = toy2d.get("ring", schedule) + ScoreOnly()


def test_metropolis_sampler_over_score_only_product_fails_before_sampling(schedule):
    target = toy2d.get("ring", schedule) * ScoreOnly()
    assert not target.has_log_prob
    with pytest.raises(ValueError, match="'mala' needs a log-density.*eps_model"):
        samplers.sample(target, samplers.get("mala"), schedule, jax.random.PRNGKey(0), 8)
    # Unadjusted samplers only need the score, so the product samples fine.
    x, _ = samplers.sample(target, samplers.get("ula", steps_per_level=1), schedule,
                           jax.random.PRNGKey(0), 8)
    assert x.shape == (8, 2)


def test_mismatched_dimensions(schedule):
    three_d = oracles.gaussian_mixture(np.zeros((1, 3)), 1.0, schedule, name="gauss3d")
    with pytest.raises(ValueError, match="different dimensions.*gauss3d has dim 3"):
        _ = toy2d.get("ring", schedule) * three_d
    with pytest.raises(ValueError, match="mixture weights must be 2 positive"):
        compose.mixture([toy2d.get("ring", schedule)] * 2, [1.0, -1.0])


@pytest.mark.parametrize("bad", [dict(step=float("nan")), dict(step=float("inf")),
                                 dict(step=-0.1), dict(mass=samplers.MassRule(float("nan"))),
                                 dict(damping=1.0), dict(leapfrog=0), dict(resample_ess=2.0)])
def test_bad_sampler_options(bad):
    with pytest.raises(ValueError):
        samplers.get("hmc", **bad)


def test_step_rule_that_overflows_is_caught(schedule):
    sampler = samplers.get("mala", step=samplers.StepRule(1.0, -400.0))
    with pytest.raises(ValueError, match="step sizes must be finite and positive"):
        samplers.sample(toy2d.get("ring", schedule), sampler, schedule, jax.random.PRNGKey(0), 8)


def test_chain_count_must_split_over_devices(schedule):
    mesh = samplers.chain_mesh(jax.devices()[:1])
    x, _ = samplers.sample(toy2d.get("ring", schedule), samplers.get("reverse"), schedule,
                           jax.random.PRNGKey(0), 7, mesh=mesh)
    assert x.shape == (7, 2) and bool(jnp.all(jnp.isfinite(x)))
    with pytest.raises(ValueError, match="num must be positive"):
        samplers.sample(toy2d.get("ring", schedule), samplers.get("reverse"), schedule,
                        jax.random.PRNGKey(0), 0)


def test_composing_something_that_is_not_a_density(schedule):
    with pytest.raises(TypeError, match="cannot compose ndarray"):
        compose.product([toy2d.get("ring", schedule), np.zeros(2)])


def test_a_density_that_is_not_a_pytree_is_named(schedule):
    class Plain(Density):
        dim, has_log_prob = 2, False

        def score(self, x, t):
            return -x

    with pytest.raises(TypeError, match="Plain.*not a pytree.*flax.struct.dataclass"):
        samplers.sample(toy2d.get("ring", schedule) * Plain(), samplers.get("ula"), schedule,
                        jax.random.PRNGKey(0), 8)
