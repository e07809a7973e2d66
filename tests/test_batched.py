"""The evaluators' batched apply: the same numbers as one call, one compile per shape."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compdiff.evaluation.batched import batched_apply


def test_matches_one_call_with_pytree_outputs_and_a_short_last_batch():
    x = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    c = np.arange(23, dtype=np.int32)

    def fn(xb, cb):
        return {"sum": xb.sum(1) + cb, "pair": (xb * 2, cb[:, None])}

    got = batched_apply(fn, x, c, batch_size=5)
    want = fn(x, c)
    np.testing.assert_array_equal(got["sum"], want["sum"])
    np.testing.assert_array_equal(got["pair"][0], want["pair"][0])
    np.testing.assert_array_equal(got["pair"][1], want["pair"][1])


def test_the_remainder_batch_reuses_the_compiled_shape():
    traces = []

    @jax.jit
    def fn(xb):
        traces.append(xb.shape)  # runs once per compile
        return jnp.tanh(xb)

    x = np.linspace(-2, 2, 2 * 37).reshape(37, 2)
    np.testing.assert_allclose(batched_apply(fn, x, batch_size=8), np.tanh(x), rtol=1e-6)
    assert traces == [(8, 2)]
    batched_apply(fn, x[:5], batch_size=8)  # fewer rows than one batch: its own shape
    assert traces == [(8, 2), (5, 2)]


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(ValueError, match="same number of rows"):
        batched_apply(lambda a, b: a, np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="batch_size"):
        batched_apply(lambda a: a, np.zeros(3), batch_size=0)
    with pytest.raises(ValueError, match="zero rows"):
        batched_apply(lambda a: a, np.zeros((0, 2)))
