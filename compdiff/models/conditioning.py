"""What a conditional network is conditioned on: a vector per sample, or the null condition.

Every image setup conditions on a vector: an object's position in ``[0, 1]^2``
(CLEVR), a one-hot class id (ImageNet), a text embedding (text-to-image). A
network reads :class:`Conditions`, the vectors ``value [B, c]`` and a mask
``present [B]``; where ``present`` is False the network uses its learned null
embedding instead of ``value`` (the unconditional model ``p(x)`` of
classifier-free guidance, trained by condition dropout). This is the
``(y, masks)`` pair of Composable Diffusion's released code.

The mask, not a reserved value, marks the null condition: every vector is a
valid condition (a position of ``(0, 0)``, a zero text embedding), and a batch
may mix conditional and unconditional rows, which is how a composition over
several conditions of one network runs as one batched call
(:mod:`compdiff.compose`).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

Array = jnp.ndarray


@flax.struct.dataclass
class Conditions:
    """``value [..., c]`` float vectors and ``present [...]`` bools (False: the null condition)."""

    value: Array
    present: Array

    @property
    def dim(self) -> int:
        return self.value.shape[-1]

    def broadcast(self, batch: int) -> Conditions:
        """These conditions for ``batch`` samples: ``[batch, c]`` and ``[batch]``."""
        return Conditions(value=jnp.broadcast_to(self.value, (batch, self.dim)),
                          present=jnp.broadcast_to(self.present, (batch,)))


def given(value: Array) -> Conditions:
    """The condition ``value [c]`` (or one per sample, ``[B, c]``)."""
    value = jnp.asarray(value, jnp.float32)
    if value.ndim not in (1, 2):
        raise ValueError(f"a condition is a vector [c] or one per sample [B, c]; got shape "
                         f"{value.shape}")
    return Conditions(value=value, present=jnp.ones(value.shape[:-1], bool))


def null(dim: int) -> Conditions:
    """The null condition of a network conditioned on ``dim``-vectors."""
    return Conditions(value=jnp.zeros((dim,), jnp.float32), present=jnp.zeros((), bool))


def drop(conditions: Conditions, key: Array, rate: float) -> Conditions:
    """Replaces each sample's condition by the null one with probability ``rate`` (training)."""
    if rate <= 0.0:
        return conditions
    keep = jax.random.uniform(key, conditions.present.shape) >= rate
    return conditions.replace(present=conditions.present & keep)


def embed(conditions: Conditions | None, embedded: Array, null_embedding: Array) -> Array:
    """``embedded [B, e]`` where a condition is present, ``null_embedding [e]`` elsewhere.

    ``conditions=None`` means the null condition for every sample.
    """
    if conditions is None:
        return jnp.broadcast_to(null_embedding, embedded.shape)
    return jnp.where(conditions.present[:, None], embedded, null_embedding)


def position_map(positions: Array, height: int, width: int, sigma: float) -> Array:
    """``[B, H, W, 1]`` Gaussian bumps at ``positions [B, 2]`` (``(u, v)``; pixel centres)."""
    u = (jnp.arange(width) + 0.5) / width
    v = (jnp.arange(height) + 0.5) / height
    du = (u[None, None, :] - positions[:, 0, None, None]) ** 2
    dv = (v[None, :, None] - positions[:, 1, None, None]) ** 2
    return jnp.exp(-(du + dv) / (2 * sigma**2))[..., None]
