"""A GFlowNet on the grid trained by trajectory balance (Malkin et al. 2022).

The forward policy is an MLP on the one-hot state, ``logits = f_theta(onehot(x), onehot(y))``,
masked at the grid's edge and normalized, with a learned scalar ``log Z``.
Trajectory balance for a complete trajectory ``tau = (s_0 -> ... -> s_n -> x)``:

    L(tau) = (log Z + sum_t log P_F(s_{t+1} | s_t) - log R(x) - sum_t log P_B(s_t | s_{t+1}))^2

with ``P_B`` uniform over parents. At its minimum ``P_F`` samples ``R / Z``.
Trajectories are drawn from ``(1 - eps) P_F + eps * uniform(allowed actions)``
(off-policy exploration, as the paper's grid code; TB stays valid off-policy).

The grid has only ``H^2`` states, so each training step evaluates the network on
all of them once (one batched call) and looks every trajectory's log-probabilities
up in that ``[H^2, 3]`` table; the gradient is the same as evaluating per visit,
and the cost no longer grows with the batch. Trajectories are sampled by one
``lax.scan`` over the ``2H - 1`` actions.
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

from compdiff.gflownet import env

Array = jax.Array
_MASKED = -1e9  # logit of a move off the grid: exp underflows to exactly 0


class MLP(nn.Module):
    """``layers`` Dense + leaky-ReLU blocks of width ``hidden``, then a Dense to ``outputs``."""

    hidden: int
    layers: int
    outputs: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for _ in range(self.layers):
            x = nn.leaky_relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.outputs)(x)


def masked_log_softmax(logits: Array, mask: Array) -> Array:
    return jax.nn.log_softmax(jnp.where(mask, logits, _MASKED), axis=-1)


def sample_trajectories(key: Array, log_probs: Array, h: int, num: int,
                        explore: float = 0.0) -> dict[str, Array]:
    """``num`` trajectories of the policy table ``log_probs [H * H, 3]``, by lax.scan.

    Returns ``states``, ``actions`` (``[num, 2H - 1]`` int32: the state at each step
    and the action taken there), ``valid`` (``[num, 2H - 1]`` bool: the step is part
    of the trajectory, i.e. it has not stopped before) and ``terminal`` (``[num]``,
    the object ``x``). With ``explore = eps`` actions come from
    ``(1 - eps) P_F + eps * uniform(allowed)``.
    """
    mask = jnp.asarray(env.action_mask(h).reshape(h * h, env.NUM_ACTIONS))

    def step(carry, k):
        state, done = carry
        logp = log_probs[state]
        if explore > 0:
            allowed = mask[state]
            uniform = allowed / allowed.sum(-1, keepdims=True)
            logp = jnp.log((1 - explore) * jnp.exp(logp) + explore * uniform)
        action = jax.random.categorical(k, jax.lax.stop_gradient(logp)).astype(jnp.int32)
        moved = ~done & (action != env.STOP)
        nxt = state + moved * jnp.where(action == env.MOVE_X, h, 1)
        return (nxt, done | (action == env.STOP)), (state, action, ~done)

    init = (jnp.zeros((num,), jnp.int32), jnp.zeros((num,), bool))
    keys = jax.random.split(key, env.num_steps(h))
    (terminal, _), (states, actions, valid) = jax.lax.scan(step, init, keys)
    return {"states": states.T, "actions": actions.T, "valid": valid.T, "terminal": terminal}


def log_pb(traj: dict[str, Array], h: int) -> Array:
    """``[num]``: ``sum_t log P_B(s_t | s_{t+1})`` with uniform ``P_B``: ``-log n_par`` per move."""
    npar = jnp.asarray(np.maximum(env.num_parents(h), 1).ravel(), jnp.float32)
    move = traj["valid"] & (traj["actions"] != env.STOP)
    nxt = traj["states"] + jnp.where(traj["actions"] == env.MOVE_X, h, 1)
    nxt = jnp.where(move, nxt, 0)
    return -jnp.sum(move * jnp.log(npar[nxt]), axis=1)


def tb_loss(log_probs: Array, log_z: Array, traj: dict[str, Array], log_r: Array,
            h: int) -> Array:
    """Mean trajectory-balance loss of a batch (module docstring); ``log_r`` is ``[H * H]``."""
    taken = jnp.take_along_axis(log_probs[traj["states"]], traj["actions"][..., None], -1)[..., 0]
    log_pf = jnp.sum(jnp.where(traj["valid"], taken, 0.0), axis=1)
    delta = log_z + log_pf - log_r[traj["terminal"]] - log_pb(traj, h)
    return jnp.mean(delta ** 2)


def policy_log_probs(net: MLP, params: Any, h: int) -> Array:
    """``[H * H, 3]`` log ``P_F`` of every state, in one network call."""
    mask = jnp.asarray(env.action_mask(h).reshape(h * h, env.NUM_ACTIONS))
    return masked_log_softmax(net.apply(params, jnp.asarray(env.one_hot_states(h))), mask)


def to_policy(log_probs: Array, h: int) -> np.ndarray:
    """A float64 ``[H, H, 3]`` policy table (rows renormalized in float64)."""
    p = np.exp(np.asarray(log_probs, np.float64)).reshape(h, h, env.NUM_ACTIONS)
    p *= env.action_mask(h)
    return p / p.sum(-1, keepdims=True)


def check_config(c: ml_collections.ConfigDict) -> None:
    for field in ("hidden", "layers", "steps", "batch"):
        if int(c[field]) != c[field] or c[field] < 1:
            raise ValueError(f"gflownet.{field}={c[field]!r}: need a positive integer")
    if not 0 <= c.explore < 1:
        raise ValueError(f"gflownet.explore={c.explore!r}: need 0 <= explore < 1")


@functools.partial(jax.jit, static_argnames=("net", "opt", "h", "batch", "explore", "steps"))
def _train_chunk(state, key, log_r, *, net, opt, h, batch, explore, steps):
    def step(carry, i):
        params, opt_state = carry

        def loss_fn(p):
            log_probs = policy_log_probs(net, p["net"], h)
            traj = sample_trajectories(jax.random.fold_in(key, i), log_probs, h, batch, explore)
            return tb_loss(log_probs, p["log_z"], traj, log_r, h)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return jax.lax.scan(step, state, jnp.arange(steps))


def train(log_r: np.ndarray, config: ml_collections.ConfigDict, seed: int,
          log_every: int = 1000) -> tuple[np.ndarray, dict]:
    """Trains a GFlowNet for ``log R [H, H]``; returns its exact policy table and a summary.

    ``config`` holds ``hidden, layers, steps, batch, lr, lr_log_z, explore``; both learning
    rates decay to 0 on a cosine over the ``steps``.
    The summary has the last chunk's mean loss, ``log Z`` and the wall seconds.
    """
    check_config(config)
    h = log_r.shape[0]
    net = MLP(config.hidden, config.layers, env.NUM_ACTIONS)
    key_init, key_train = jax.random.split(jax.random.PRNGKey(seed))
    params = {"net": net.init(key_init, jnp.zeros((1, 2 * h))), "log_z": jnp.zeros(())}
    opt = optax.multi_transform(
        {"net": optax.adam(optax.cosine_decay_schedule(config.lr, config.steps)),
         "log_z": optax.adam(optax.cosine_decay_schedule(config.lr_log_z, config.steps))},
        {"net": jax.tree.map(lambda _: "net", params["net"]), "log_z": "log_z"})
    state = (params, opt.init(params))
    start, done, loss = time.time(), 0, float("nan")
    while done < config.steps:
        chunk = min(log_every, config.steps - done)
        state, losses = _train_chunk(state, jax.random.fold_in(key_train, done),
                                     jnp.asarray(log_r.ravel(), jnp.float32), net=net, opt=opt, h=h,
                                     batch=config.batch, explore=float(config.explore),
                                     steps=chunk)
        done += chunk
        loss = float(jnp.mean(losses))
        logging.info("gflownet TB step %d/%d loss %.4f log Z %.3f", done, config.steps, loss,
                     float(state[0]["log_z"]))
    policy = to_policy(policy_log_probs(net, state[0]["net"], h), h)
    return policy, {"loss": loss, "log_z": float(state[0]["log_z"]),
                    "seconds": time.time() - start}
