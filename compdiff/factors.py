"""Factor graphs: a density over a few coordinates lifted into a larger space.

A constraint graph over ``n`` objects (Du & Kaelbling 2024, Fig. 8; Yang et al. 2023) is a
product of low-dimensional factors, each over the coordinates of the variables it relates:

    q(V) ∝ prod_c p_c(V^c),        V^c = x[idx_c]  (e.g. the 4 coordinates of a pair of 2D
                                                     positions).

:class:`Lifted` is one factor as a :class:`~compdiff.compose.Density` over the whole space
``R^D``: with ``S`` the ``k x D`` selection ``x -> x[idx]`` (``idx`` distinct coordinates),

    log p_lift(x, t) = log p(x[idx], t),     grad_x log p_lift = S^T grad log p (x[idx], t),

i.e. the factor's score scattered back onto its coordinates and zero on the others (it is
flat along them: a factor alone is improper in ``R^D``; a product whose factors cover every
coordinate need not be). Products of lifted factors are ordinary :func:`compdiff.compose.product`
nodes, so every sampler and the composition algebra apply unchanged. The coordinates are data (a
pytree leaf), so graphs of one shape (the same number of factors of each density) share
compiled code.

Overlapping factors. Each pair model ``p_c(v_i, v_j)`` carries the marginal of each of its
objects, so at noise level ``t > 0`` the product counts object ``i``'s diffused marginal
``deg(i)`` times (at level ``T`` it is ``N(0, I / deg(i))``, not ``N(0, I)``); at level 0 the
repeated marginal of a uniform box is the box again. :func:`factor_graph` takes weights, so a
known prior can be divided out (``-(deg(i) - 1)``); with learned factors whose tails outside
the training box are unconstrained this can be improper (docs/constraint_composition.md).

Shared networks. Factors lifting the same density object (one pair model used for many pairs)
share :meth:`Lifted.network_key`, so a product evaluates them as ONE call of the inner density on
the ``[K * B, k]`` batch of their ``K`` coordinate selections (:meth:`Lifted.evaluate_together`):
a graph with 28 "not overlapping" edges costs one network call per level, not 28.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from compdiff.compose import LOG_PROB, SCORE, Density, Product, product

Array = jnp.ndarray


@flax.struct.dataclass
class Lifted(Density):
    """``inner`` (over ``R^k``) read on coordinates ``coords`` of ``R^dim``."""

    inner: Density
    coords: Array  # [k] int32; data, not structure: graphs of one shape compile once
    dim: int = flax.struct.field(pytree_node=False, default=0)

    @property
    def has_log_prob(self) -> bool:
        return self.inner.has_log_prob

    def _select(self, x: Array) -> Array:
        return x[:, self.coords]

    def _scatter(self, g: Array, batch: int) -> Array:
        return jnp.zeros((batch, self.dim), g.dtype).at[:, self.coords].set(g)

    def log_prob(self, x: Array, t: Array) -> Array:
        self.inner.require_log_prob("log_prob")
        return self.inner.log_prob(self._select(x), t)

    def score(self, x: Array, t: Array) -> Array:
        return self._scatter(self.inner.score(self._select(x), t), x.shape[0])

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        self.inner.require_log_prob("log_prob_and_score")
        log_p, g = self.inner.log_prob_and_score(self._select(x), t)
        return log_p, self._scatter(g, x.shape[0])

    def describe(self) -> str:
        try:
            where = str([int(c) for c in self.coords])
        except (TypeError, jax.errors.ConcretizationTypeError):  # traced coordinates
            where = "[...]"
        return f"{self.inner.describe()}@{where}"

    def score_only_leaves(self) -> list[str]:
        return [] if self.has_log_prob else [self.describe()]

    def network_key(self) -> Hashable | None:
        """Factors lifting the same density object (and with the same ``k``) share a key."""
        return ("lifted", id(self.inner), self.coords.shape[0])

    @classmethod
    def evaluate_together(cls, members: Sequence[Lifted], x: Array, t: Array, what: str
                          ) -> list:
        """``K`` factors of one inner density as one call on their stacked selections."""
        k, b = len(members), x.shape[0]
        inner = members[0].inner
        stacked = jnp.concatenate([m._select(x) for m in members])  # [K * B, k]
        t = jnp.asarray(t)
        t_k = t if t.ndim == 0 else jnp.tile(jnp.broadcast_to(t, (b,)), k)
        out = getattr(inner, what)(stacked, t_k)
        if what == LOG_PROB:
            return list(out.reshape(k, b))
        if what == SCORE:
            return [m._scatter(g, b) for m, g in zip(members, out.reshape(k, b, -1))]
        log_p, g = out
        return [(lp, m._scatter(gi, b)) for m, lp, gi in zip(members, log_p.reshape(k, b),
                                                            g.reshape(k, b, -1))]


def lift(inner: Density, coords: Sequence[int], dim: int) -> Lifted:
    """``inner`` over coordinates ``coords`` (distinct, in ``[0, dim)``) of ``R^dim``."""
    coords = tuple(int(c) for c in coords)
    if len(coords) != inner.dim:
        raise ValueError(f"{inner.describe()} is over R^{inner.dim} but {len(coords)} "
                         f"coordinates {list(coords)} were given")
    if len(set(coords)) != len(coords) or not all(0 <= c < dim for c in coords):
        raise ValueError(f"coordinates must be distinct and in [0, {dim}), got {list(coords)}")
    return Lifted(inner=inner, coords=jnp.asarray(coords, jnp.int32), dim=dim)


def object_coords(i: int, j: int, object_dim: int = 2) -> tuple[int, ...]:
    """The coordinates of objects ``i`` then ``j`` when each object has ``object_dim``."""
    return (tuple(range(i * object_dim, (i + 1) * object_dim))
            + tuple(range(j * object_dim, (j + 1) * object_dim)))


def factor_graph(factors: Sequence[tuple[Density, Sequence[int]]], dim: int,
                 weights: Sequence[float] | None = None) -> Product:
    """The (weighted) product of ``inner`` densities each on its coordinates,
    ``prod_c p_c(x[idx_c]) ** w_c``; every coordinate of ``R^dim`` must belong to some factor
    (else the product is flat, and improper, along it)."""
    if not factors:
        raise ValueError("a factor graph needs at least one factor")
    lifted = [lift(inner, coords, dim) for inner, coords in factors]
    covered = {int(c) for f in lifted for c in f.coords}
    if len(covered) != dim:
        raise ValueError(f"coordinates {sorted(set(range(dim)) - covered)} belong to no factor")
    return product(lifted, weights)
