"""The composition expression grammar."""

import jax
import numpy as np
import pytest

from compdiff import compose, expr, schedules
from compdiff.data import toy2d

SCHEDULE = schedules.get("linear", 10)
LEAVES = {n: toy2d.get(n, SCHEDULE) for n in ("ring", "bar", "left_bar", "left_half_ring")}
X = jax.random.normal(jax.random.PRNGKey(0), (4, 2)) * 0.5


@pytest.mark.parametrize("text, expected", [
    ("ring*bar", compose.product([LEAVES["ring"], LEAVES["bar"]])),
    ("ring / left_half_ring^0.5", compose.negation(LEAVES["ring"], LEAVES["left_half_ring"])),
    ("left_bar + bar", compose.mixture([LEAVES["left_bar"], LEAVES["bar"]])),
    ("(ring + bar) * left_bar^2", compose.product(
        [compose.mixture([LEAVES["ring"], LEAVES["bar"]]), LEAVES["left_bar"]], [1.0, 2.0])),
    ("ring^1e-1", compose.product([LEAVES["ring"]], [0.1])),
])
def test_parse_matches_the_algebra(text, expected):
    got = expr.parse(text, LEAVES)
    np.testing.assert_allclose(got.log_prob(X, 3), expected.log_prob(X, 3), rtol=1e-6)


@pytest.mark.parametrize("text, message", [
    ("ring * (bar", "expected ')'"),
    ("ring ** bar", "expected a model name"),
    ("ring^", "expected a number"),
    ("ring bar", "unexpected token"),
    ("__import__('os')", "unexpected character"),
    ("moon", "unknown model 'moon'"),
    ("", "empty"),
])
def test_parse_errors_are_clear(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expr.parse(text, LEAVES)


def test_names():
    assert expr.names("ring / left_half_ring^0.5 * ring") == ["ring", "left_half_ring"]


@pytest.mark.parametrize("text", ["ring + bar + left_bar", "(ring + bar) + left_bar",
                                  "ring + (bar + left_bar)"])
def test_mixtures_flatten_so_operators_and_grammar_agree(text):
    """``a + b + c`` is the equal-weight mixture however it is written or parenthesized."""
    ring, bar, left = (LEAVES[n] for n in ("ring", "bar", "left_bar"))
    flat = compose.mixture([ring, bar, left])
    for got in (expr.parse(text, LEAVES), ring + bar + left, ring + (bar + left)):
        assert len(got.children) == 3
        np.testing.assert_allclose(np.exp(got.log_weights), [1 / 3] * 3, rtol=1e-6)
        np.testing.assert_allclose(got.log_prob(X, 3), flat.log_prob(X, 3), rtol=1e-6)


def test_an_explicit_nested_mixture_keeps_its_weights():
    ring, bar, left = (LEAVES[n] for n in ("ring", "bar", "left_bar"))
    nested = compose.mixture([compose.mixture([ring, bar]), left])
    assert len(nested.children) == 3
    np.testing.assert_allclose(np.exp(nested.log_weights), [0.25, 0.25, 0.5], rtol=1e-6)
