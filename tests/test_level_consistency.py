"""The level-consistency check on exact oracles: the true densities never favour points
built from noise, and an energy whose level dependence is wrong is caught."""

import flax.struct
import jax
import jax.numpy as jnp
import pytest

from compdiff import schedules
from compdiff.compose import Density
from compdiff.data import toy2d
from compdiff.evaluation.level_consistency import level_increments

SCHEDULE = schedules.get("linear", 100)
LEVELS = (2, 5, 10, 20)


@flax.struct.dataclass
class _Misleveled(Density):
    """The exact density plus ``c t |x|^2``: the same data, a wrong tie between levels
    (each increment gains ``-c |x|^2``, which favours far points for ``c < 0``)."""

    inner: Density
    c: float = flax.struct.field(pytree_node=False, default=-20.0)
    dim: int = flax.struct.field(pytree_node=False, default=2)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)

    def log_prob(self, x, t):
        return self.inner.log_prob(x, t) + self.c * t * jnp.sum(x * x, -1)


def _points(oracle):
    data = oracle.sample(jax.random.PRNGKey(0), 500)
    reference = jax.random.uniform(jax.random.PRNGKey(1), data.shape, minval=-2, maxval=2)
    return data, reference


@pytest.mark.parametrize("name", ["ring", "bar"])
def test_exact_densities_favour_points_built_from_data(name):
    oracle = toy2d.get(name, SCHEDULE)
    rows = level_increments(oracle, *_points(oracle), SCHEDULE, LEVELS, jax.random.PRNGKey(2))
    assert [r["level"] for r in rows] == list(LEVELS)
    for r in rows:
        assert r["log_p_data"] > r["log_p_reference"], r
        assert r["increment_data"] > r["increment_reference"], r
        assert r["reference_favoured"] < 0.3, r


def test_a_wrong_level_dependence_is_caught():
    oracle = toy2d.get("ring", SCHEDULE)
    rows = level_increments(_Misleveled(oracle), *_points(oracle), SCHEDULE, (5, 10, 20),
                            jax.random.PRNGKey(2))
    assert min(r["reference_favoured"] for r in rows) > 0.7, rows  # exact: below 0.3


def test_levels_must_have_a_level_below():
    oracle = toy2d.get("ring", SCHEDULE)
    with pytest.raises(ValueError, match="levels must lie in"):
        level_increments(oracle, *_points(oracle), SCHEDULE, (1,), jax.random.PRNGKey(0))
