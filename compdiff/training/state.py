"""The train state: parameters, their bias-corrected EMA and Adam's moments.

Updates are Adam after clipping the global gradient norm. The model one
normally samples from is the bias-corrected EMA of the parameter iterates
``params_1 .. params_n`` (the ``n`` updates so far), corrected as Adam
corrects its moments:

    ema_n = sum_{k=1..n} (1 - d) d^(n-k) params_k / (1 - d^n),

a convex combination with no weight on the random initialization (the
plain ``ema <- d ema + (1 - d) params`` started at the init keeps weight
``d^n`` on it: 5% after 3000 steps at ``d = 0.999``). The state holds the
corrected ``ema_n`` itself, updated as

    ema_n = w_n ema_(n-1) + (1 - w_n) params_n,    w_n = d (1 - d^(n-1)) / (1 - d^n),

which is the biased recurrence ``m_n = d m_(n-1) + (1 - d) params_n``,
``m_0 = 0``, divided by ``1 - d^n``. ``w_1 = 0``, so ``ema_1 = params_1``
whatever ``ema_0`` holds; the update needs only the step count, so the
checkpoint layout is unchanged (a run started before this correction resumes,
and keeps the old init weight, shrinking as ``d^n``).

Checkpoints (``workdir/checkpoints/N/``, orbax) hold the whole :class:`TrainState`;
:func:`restore` reads the newest one that restores, given the network whose
parameters it holds.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from compdiff import checkpoints
from compdiff.models import conditioning

Array = jnp.ndarray


@flax.struct.dataclass
class TrainState:
    step: Array  # int32 scalar: number of updates applied
    params: Any
    ema_params: Any
    opt_state: Any


def optimizer(lr: float, grad_clip: float) -> optax.GradientTransformation:
    """Adam after clipping the global gradient norm at ``grad_clip``."""
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(lr))


def network_cond_dim(config: ml_collections.ConfigDict) -> int:
    """Length of the condition vectors the network of ``config`` reads (0: none)."""
    if config.model.get("network", "mlp") == "classifier":
        return 2 if config.model.get("query", "none") == "position" else 0
    return config.model.get("cond_dim", 0)


def init_state(config: ml_collections.ConfigDict, network: nn.Module, key: Array) -> TrainState:
    """The state before the first update: initialized parameters (and EMA), Adam at zero."""
    return _init_state(key, network=network, lr=config.train.lr,
                       grad_clip=config.train.grad_clip, cond_dim=network_cond_dim(config))


# Compiled as one program (eagerly, every initializer op would compile on its own) and
# cached on the hashable network and hyperparameters.
@functools.partial(jax.jit, static_argnames=("network", "lr", "grad_clip", "cond_dim"))
def _init_state(key: Array, *, network: nn.Module, lr: float, grad_clip: float,
                cond_dim: int = 0) -> TrainState:
    x = jnp.zeros((1, network.dim), jnp.float32)
    cond = conditioning.given(jnp.zeros((1, cond_dim))) if cond_dim else None
    params = network.init(key, x, jnp.ones((1,), jnp.int32), cond)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=optimizer(lr, grad_clip).init(params))


def abstract_state(config: ml_collections.ConfigDict, network: nn.Module) -> TrainState:
    """Shapes and dtypes of :func:`init_state`'s state, for restoring into."""
    return jax.eval_shape(lambda: init_state(config, network, jax.random.key(0)))


def ema_weight(step: Array, decay: float) -> Array:
    """``w_n = d (1 - d^(n-1)) / (1 - d^n)`` of the bias-corrected EMA at update ``n = step``."""
    if decay == 0.0:
        return jnp.zeros((), jnp.float32)
    n, log_d = step.astype(jnp.float32), math.log(decay)
    # 1 - d^k as -expm1(k log d): no cancellation for d near 1; expm1(0) = 0 makes w_1 exact.
    return decay * jnp.expm1((n - 1.0) * log_d) / jnp.expm1(n * log_d)


def apply_update(state: TrainState, grads: Any, *, lr: float, grad_clip: float,
                 ema_decay: float) -> TrainState:
    """``state`` after one Adam update by ``grads`` and the EMA's step (traceable)."""
    updates, opt_state = optimizer(lr, grad_clip).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    w = ema_weight(state.step + 1, ema_decay)
    ema = jax.tree.map(lambda e, p: w * e + (1.0 - w) * p, state.ema_params, params)
    return TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)


def replicated() -> NamedSharding:
    """Every device holds the whole array (parameters; oracles and points data)."""
    return NamedSharding(Mesh(np.asarray(jax.devices()), ("batch",)), PartitionSpec())


def batch_sharding() -> NamedSharding:
    """Arrays split over all devices on their leading (batch) axis."""
    return NamedSharding(replicated().mesh, PartitionSpec("batch"))


def restore(workdir: str, config: ml_collections.ConfigDict, network: nn.Module
            ) -> TrainState:
    """The state at ``workdir``'s newest checkpoint that restores, read-only.

    A newer checkpoint that does not restore is skipped with a warning and
    left in place (a training may be running there; it moves such
    checkpoints aside itself when it resumes).
    """
    manager, _, state = checkpoints.restore_newest(
        workdir, abstract_state(config, network), replicated(), read_only=True)
    manager.close()
    return state


def save(manager: ocp.CheckpointManager, step: int, state: TrainState) -> None:
    """Checkpoint ``step`` of ``state`` (asynchronous; orbax renames it into place when done)."""
    manager.save(step, args=ocp.args.StandardSave(state))
