"""The classifier ``Q_phi(y_1..y_n | s)`` of compositional sculpting, trained as the paper does.

One MLP trunk on the one-hot state with two heads: a terminal head ``q_phi(y | x)``
over the m base models, and a non-terminal head over the ``m^n`` label tuples.
Each step samples B trajectories from every base GFlowNet (label ``y_1 = i`` for
base i) and minimizes

    L = L_term + min(1, step / ramp) * L_nonterm
    L_term    = -mean_tau log q_phi(y_1 | x)
    L_nonterm = -mean_tau sum_{s in tau} sum_{y_2..y_n} w(y_2..y_n) log Q_phi(y_1, y_2..y_n | s),
    w(y_2..y_n) = prod_{k>=2} q_target(y_k | x)

where ``x`` ends the trajectory and ``q_target`` is an EMA copy of the terminal
head (the paper's bootstrapping: later labels of an intermediate state are the
terminal classifier's predictions for where its trajectory ended). The sum runs
over the states before ``stop`` (``s_0`` .. ``s_n = x`` as an unfinished state).
The minimizer is :func:`compdiff.gflownet.composition.exact_classifier`.

As in :mod:`compdiff.gflownet.tb`, every step evaluates the network once on all
``H^2`` states and looks the visited states up in the resulting tables.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from compdiff.gflownet import env, tb

Array = jax.Array


class Classifier(nn.Module):
    """Trunk MLP, then ``(non-terminal logits [.., m^n], terminal logits [.., m])``."""

    hidden: int
    layers: int
    m: int
    n: int

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        for _ in range(self.layers):
            x = nn.leaky_relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.m ** self.n)(x), nn.Dense(self.m)(x)


def tables(net: Classifier, params: Any, h: int) -> tuple[Array, Array]:
    """Log tables ``([H * H, m^n], [H * H, m])`` of every state, in one network call."""
    nonterm, term = net.apply(params, jnp.asarray(env.one_hot_states(h)))
    return jax.nn.log_softmax(nonterm, -1), jax.nn.log_softmax(term, -1)


def later_label_weights(q: Array, n: int) -> Array:
    """``[B, m^(n-1)]``: ``prod_{k>=2} q(y_k | x)`` for every tuple ``(y_2..y_n)`` in C order."""
    w = jnp.ones(q.shape[:1] + (1,))
    for _ in range(n - 1):
        w = (w[:, :, None] * q[:, None, :]).reshape(q.shape[0], -1)
    return w


def loss_fn(params: Any, target_params: Any, trajs: list[dict[str, Array]], *, net: Classifier,
            h: int, ramp: Array) -> tuple[Array, tuple[Array, Array]]:
    """The loss of the module docstring over trajectories of each base model (label = index)."""
    nonterm, term = tables(net, params, h)
    _, term_target = tables(net, target_params, h)
    m, n = net.m, net.n
    loss_term = loss_nonterm = 0.0
    for i, traj in enumerate(trajs):
        x = traj["terminal"]
        loss_term -= jnp.mean(term[x, i])
        w = later_label_weights(jnp.exp(jax.lax.stop_gradient(term_target[x])), n)
        # Q(y_1 = i, y_2..y_n | s) sits in columns i * m^(n-1) .. (i + 1) * m^(n-1).
        own = nonterm[traj["states"]][..., i * m ** (n - 1):(i + 1) * m ** (n - 1)]
        per_state = jnp.sum(w[:, None, :] * own, axis=-1)
        loss_nonterm -= jnp.mean(jnp.sum(jnp.where(traj["valid"], per_state, 0.0), axis=1))
    loss_term, loss_nonterm = loss_term / len(trajs), loss_nonterm / len(trajs)
    return loss_term + ramp * loss_nonterm, (loss_term, loss_nonterm)


@functools.partial(jax.jit, static_argnames=("net", "opt", "h", "batch", "ramp_steps", "ema",
                                             "steps"))
def _train_chunk(state, key, base_log_probs, *, net, opt, h, batch, ramp_steps, ema, steps):
    def step(carry, i):
        params, target, opt_state, count = carry
        keys = jax.random.split(jax.random.fold_in(key, i), base_log_probs.shape[0])
        trajs = [tb.sample_trajectories(k, lp, h, batch) for k, lp in zip(keys, base_log_probs)]
        ramp = jnp.minimum(1.0, count / ramp_steps) if ramp_steps > 0 else 1.0
        grads, parts = jax.grad(loss_fn, has_aux=True)(params, target, trajs, net=net, h=h,
                                                       ramp=ramp)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        target = jax.tree.map(lambda t, p: ema * t + (1 - ema) * p, target, params)
        return (params, target, opt_state, count + 1), jnp.stack(parts)

    return jax.lax.scan(step, state, jnp.arange(steps))


def check_config(c: ml_collections.ConfigDict) -> None:
    for field in ("hidden", "layers", "steps", "batch"):
        if int(c[field]) != c[field] or c[field] < 1:
            raise ValueError(f"classifier.{field}={c[field]!r}: need a positive integer")
    if not 0 <= c.ema < 1:
        raise ValueError(f"classifier.ema={c.ema!r}: need 0 <= ema < 1")


def train(policies: list[np.ndarray], n: int, config: ml_collections.ConfigDict, seed: int,
          log_every: int = 1000) -> tuple[np.ndarray, np.ndarray, dict]:
    """Trains ``Q_phi`` on trajectories of the base ``policies`` ``[H, H, 3]``.

    Returns float64 log tables ``(nonterminal [H, H, m^n], terminal [H, H, m])`` and a
    summary (last chunk's mean terminal and non-terminal losses, wall seconds).
    ``config`` holds ``hidden, layers, steps, batch, lr, ema, ramp_steps``; the learning
    rate decays to 0 on a cosine over the ``steps`` (harmonic-mean L1 0.040 against 0.048
    with a constant rate at 32 x 32, docs/gflownet.md).
    """
    check_config(config)
    if n < 1:
        raise ValueError(f"classifier over n={n} observations: need n >= 1")
    h, m = policies[0].shape[0], len(policies)
    net = Classifier(config.hidden, config.layers, m, n)
    key_init, key_train = jax.random.split(jax.random.PRNGKey(seed))
    params = net.init(key_init, jnp.zeros((1, 2 * h)))
    opt = optax.adam(optax.cosine_decay_schedule(config.lr, config.steps))
    with np.errstate(divide="ignore"):
        base = jnp.asarray(np.log(np.stack(policies)).reshape(m, h * h, env.NUM_ACTIONS),
                           jnp.float32)
    state = (params, params, opt.init(params), jnp.zeros((), jnp.float32))
    start, done, parts = time.time(), 0, np.full(2, np.nan)
    while done < config.steps:
        chunk = min(log_every, config.steps - done)
        state, losses = _train_chunk(state, jax.random.fold_in(key_train, done), base, net=net,
                                     opt=opt, h=h, batch=config.batch,
                                     ramp_steps=int(config.ramp_steps), ema=float(config.ema),
                                     steps=chunk)
        done += chunk
        parts = np.asarray(jnp.mean(losses, axis=0))
        logging.info("gflownet classifier step %d/%d loss terminal %.4f non-terminal %.4f",
                     done, config.steps, parts[0], parts[1])
    nonterm, term = tables(net, state[0], h)
    as_grid = lambda a: np.asarray(a, np.float64).reshape(h, h, -1)
    return as_grid(nonterm), as_grid(term), {"loss_terminal": float(parts[0]),
                                             "loss_nonterminal": float(parts[1]),
                                             "seconds": time.time() - start}
