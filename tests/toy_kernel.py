"""A sampler of one's own, as a user writes it: a kernel and its registration, one file.

Importing this module registers ``toy``: a Langevin step at half the step size, without
a Metropolis test (so it needs only scores). ``tests/test_new_sampler.py`` runs a table
and ``scripts/sample.py --register=toy_kernel --sampler=toy`` with it.
"""

import jax
import jax.numpy as jnp

from compdiff import samplers
from compdiff.samplers import kernels


def toy(target, state: kernels.ChainState, key: jax.Array, p: kernels.LevelParams):
    eta = 0.5 * p.step_size
    x = state.x + eta * state.grad + jnp.sqrt(2 * eta) * jax.random.normal(key, state.x.shape)
    log_prob, grad = kernels.evaluate(target, x, p.t)
    return state.replace(x=x, log_prob=log_prob, grad=grad), jnp.ones(x.shape[:1])


samplers.register("toy", toy, needs_log_prob=False)
