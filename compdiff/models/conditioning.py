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

Conditions are array leaves, never static fields, so compositions that differ only in
their condition values (two prompts of one shape, two position sets of one size, two
class ids) have one pytree structure and share one compiled sampler. What a condition is
called, for ``describe()``, is a :class:`Label`: static (kept through ``tree_map`` and
``jit``) but equal to every other label, so it stays out of the jit cache key.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Label:
    """Human-readable text of a condition (``"a red cube"``, ``"0.25,0.50"``, ``"y=3"``).

    For a static (``pytree_node=False``) field of a density that only names its
    condition: every label equals every other label and all hash alike, so
    compositions that differ only in their labels have equal pytree structures and
    share jit cache entries (the annealed sampler compiles once for them). The text
    still travels with the density (``tree_map``, ``replace``); inside a compiled
    function it is the text of the call that traced it.
    """

    text: str = ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Label)

    def __hash__(self) -> int:
        return hash(Label)

    def __str__(self) -> str:
        return self.text

    def __bool__(self) -> bool:
        return bool(self.text)


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
