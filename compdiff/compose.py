"""The composition algebra over level-``t`` densities (docs/design.md section 3).

Every model, trained or analytic, is a :class:`Density`: at level ``t`` it
gives ``log_prob(x, t)`` (unnormalized, where it has one) and
``score(x, t) = grad_x log p_t(x)``, batched over the leading axis of ``x``.
Compositions are trees of densities:

- product / weighted product: ``log pi = sum_i w_i log p_i``,
  ``score = sum_i w_i score_i``. Negation is a negative weight
  (``p0 / p1 ** 0.5`` is ``log p0 - 0.5 log p1``) and tempering a single
  weight (``p ** 2``).
- mixture: ``log pi = logsumexp_i(log w_i + log p_i)`` with score
  ``sum_i r_i score_i``, ``r = softmax(log w + log p)``. Mixtures flatten
  like products: :func:`mixture` of a mixture is the one exact flat mixture
  (nested weights multiply), and ``+`` is the n-ary equal-weight mixture, so
  ``a + b + c`` weighs each term 1/3 whatever the parenthesization (a mixture
  of ``K`` components counts as ``K`` terms of ``+``). This needs every
  component's log-density, so a mixture over a score-only model fails when it
  is built. The components' unknown normalizers are taken to be equal (as in
  RRR); with trained energy models the mixture weights are therefore only
  nominal.
- guidance: a classifier's ``log p(y | x_t, t)`` is a density like any other,
  so classifier guidance is ``model * classifier ** scale`` and
  classifier-free guidance a weighted product of the conditional and
  unconditional models (:func:`classifier_free`).

All nodes are pytrees (weights are leaves, structure is static), so a whole
composition passes through ``jax.jit`` and ``lax.scan`` as data.

Shared networks run once, over the whole tree. Leaves that are one network
under different conditions (``model.condition(c1) * model.condition(c2) /
model.unconditional() ** 0.5``, or ``(a * b / u) + (c / d ** 0.5)``, a
mixture of products) are evaluated as ONE batched network call with the
conditions stacked on the batch axis (one vjp for energy forms), not one call
per leaf or per branch. Products and mixtures are :class:`Node` s: the node
that is asked (the root) collects the leaves of its whole subtree
(:func:`composition_leaves`, descending through nested nodes), works out what
each leaf must give (a product asked for its score needs only its children's
scores; a mixture needs their log-densities too, for the responsibilities),
evaluates each group of leaves sharing a network once with the strongest
requirement of its members, and folds the parts back up the tree
(:meth:`Node.combine`). Which leaves share a network is decided when the node
is built (:meth:`Density.network_key`, by identity of the parameters) and
stored as static structure (``groups``, indices into the node's leaves):
inside ``jit`` the parameters are tracers, one per leaf, and identity no
longer says anything. Setting a node's ``groups`` to ``()`` evaluates every
leaf of that node on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

Array = jnp.ndarray


class Density:
    """A family of level-``t`` densities over ``R^dim``.

    Subclasses set ``dim`` and ``has_log_prob`` and implement ``score`` and,
    when they have one, ``log_prob``. ``log_prob_and_score`` returns both from
    one forward and one backward pass.
    """

    dim: int
    has_log_prob: bool

    def log_prob(self, x: Array, t: Array) -> Array:
        raise TypeError(f"{self.describe()} has no log-density (it is score-only)")

    def score(self, x: Array, t: Array) -> Array:
        return self.log_prob_and_score(x, t)[1]

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        """``(log p_t(x) [B], grad_x log p_t(x) [B, d])`` from one vjp."""
        self.require_log_prob("log_prob_and_score")
        log_p, pullback = jax.vjp(lambda y: self.log_prob(y, t), x)
        # Rows of x are independent samples, so the vjp of the batch sum is
        # every sample's own gradient.
        (grad,) = pullback(jnp.ones_like(log_p))
        return log_p, grad

    def describe(self) -> str:
        return type(self).__name__

    def network_key(self) -> Hashable | None:
        """Equal for leaves that are one network under different conditions, else ``None``.

        Leaves with equal keys are evaluated together by :meth:`evaluate_together`.
        """
        return None

    @classmethod
    def evaluate_together(cls, members: Sequence[Density], x: Array, t: Array,
                          what: str) -> list:
        """Every member's ``log_prob``, ``score`` or ``log_prob_and_score`` (``what``).

        Subclasses whose leaves share a network override this with one batched call.
        """
        return [getattr(m, what)(x, t) for m in members]

    def score_only_leaves(self) -> list[str]:
        return [] if self.has_log_prob else [self.describe()]

    def require_log_prob(self, what: str) -> None:
        if not self.has_log_prob:
            raise ValueError(
                f"{what} needs a log-density, but {self.describe()} is score-only "
                f"(score-only leaves: {', '.join(self.score_only_leaves())}). "
                "Use energy-parameterized or oracle models.")

    # --- the algebra, close to the math ------------------------------------
    def __mul__(self, other: Density) -> Product:
        return product([self, other])

    def __truediv__(self, other: Density) -> Product:
        return product([self, other], [1.0, -1.0])

    def __pow__(self, weight: float) -> Product:
        return product([self], [weight])

    def __add__(self, other: Density) -> Mixture:
        terms, weights = [], []
        for operand in (self, other):
            if isinstance(operand, Mixture):
                k = len(operand.children)
                terms += list(operand.children)
                weights += [k * float(w) for w in jnp.exp(operand.log_weights)]
            else:
                terms.append(operand)
                weights.append(1.0)
        return mixture(terms, weights)


def _check_dims(children: Sequence[Density]) -> int:
    for child in children:
        if not isinstance(child, Density):
            raise TypeError(f"cannot compose {type(child).__name__}; expected a Density")
    dims = {c.dim for c in children}
    if len(dims) != 1:
        raise ValueError(
            "cannot compose densities over different dimensions: "
            + ", ".join(f"{c.describe()} has dim {c.dim}" for c in children))
    return dims.pop()


def shared_network_groups(children: Sequence[Density]) -> tuple[tuple[int, ...], ...]:
    """Indices of densities that share a network (two or more each), by :meth:`network_key`."""
    buckets: dict[Hashable, list[int]] = {}
    for i, child in enumerate(children):
        key = child.network_key()
        if key is not None:
            buckets.setdefault(key, []).append(i)
    return tuple(tuple(g) for g in buckets.values() if len(g) > 1)


def _evaluate(children: Sequence[Density], groups: tuple[tuple[int, ...], ...], x: Array,
              t: Array, what: str) -> list:
    """Each child's ``what`` (a method name), one batched call per group of shared networks.

    For nodes that group their direct children (``sculpt``); :class:`Node` s group
    the leaves of their whole subtree instead (:func:`_evaluate_tree`).
    """
    parts: list = [None] * len(children)
    for group in groups:
        members = [children[i] for i in group]
        for i, part in zip(group, type(members[0]).evaluate_together(members, x, t, what)):
            parts[i] = part
    return [getattr(c, what)(x, t) if p is None else p for c, p in zip(children, parts)]


LOG_PROB, SCORE, BOTH = "log_prob", "score", "log_prob_and_score"


class Node(Density):
    """A composition node that hands its leaves up to the root (products, mixtures).

    Subclasses are dataclasses with fields ``children`` (densities) and
    ``groups`` (indices into :func:`composition_leaves` of the node that share
    a network, from :func:`shared_network_groups` at build time), and say

    - :meth:`child_need`: what each child must give for the node to give ``what``;
    - :meth:`combine`: the node's ``what`` from its children's parts.

    ``log_prob``, ``score`` and ``log_prob_and_score`` of the node asked first
    evaluate the leaves of its whole subtree together (:func:`_evaluate_tree`);
    nested nodes only fold.
    """

    children: tuple[Density, ...]
    groups: tuple[tuple[int, ...], ...]

    def child_need(self, what: str) -> str:
        raise NotImplementedError

    def combine(self, parts: list, what: str) -> Any:
        raise NotImplementedError

    def log_prob(self, x: Array, t: Array) -> Array:
        self.require_log_prob(f"{type(self).__name__}.log_prob")
        return _evaluate_tree(self, x, t, LOG_PROB)

    def score(self, x: Array, t: Array) -> Array:
        return _evaluate_tree(self, x, t, SCORE)

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        self.require_log_prob(f"{type(self).__name__}.log_prob_and_score")
        return _evaluate_tree(self, x, t, BOTH)


def composition_leaves(density: Density) -> list[Density]:
    """The leaves of ``density`` left to right, descending through every :class:`Node`."""
    if isinstance(density, Node):
        return [leaf for child in density.children for leaf in composition_leaves(child)]
    return [density]


def _leaf_groups(children: Sequence[Density]) -> tuple[tuple[int, ...], ...]:
    """The ``groups`` of a node over ``children``: leaves of the whole subtree sharing a network."""
    return shared_network_groups([leaf for c in children for leaf in composition_leaves(c)])


def _leaf_needs(density: Density, what: str) -> list[str]:
    """What each leaf (in :func:`composition_leaves` order) must give for ``density``'s ``what``."""
    if isinstance(density, Node):
        need = density.child_need(what)
        return [n for child in density.children for n in _leaf_needs(child, need)]
    return [what]


def _narrow(part: Any, have: str, want: str) -> Any:
    """``want`` out of a part computed as ``have`` (equal, or ``have`` is both)."""
    if have == want:
        return part
    return part[0] if want == LOG_PROB else part[1]


def _fold(density: Density, what: str, leaf_parts: Iterator) -> Any:
    if not isinstance(density, Node):
        return next(leaf_parts)
    need = density.child_need(what)
    return density.combine([_fold(c, need, leaf_parts) for c in density.children], what)


def _evaluate_tree(root: Node, x: Array, t: Array, what: str) -> Any:
    """``root``'s ``what`` with one batched call per group of leaves sharing a network.

    A group whose members need different things (a leaf of a mixture needs its
    log-density and score, a sibling under a product only its score) is
    evaluated once for the strongest need, ``log_prob_and_score``, and each
    member takes its part.
    """
    return _fold(root, what, iter(_leaf_parts(root, x, t, what)))


def _leaf_parts(root: Node, x: Array, t: Array, what: str) -> list:
    """Every leaf's part of ``root``'s ``what``, one batched call per group of shared networks."""
    leaves, needs = composition_leaves(root), _leaf_needs(root, what)
    parts: list = [None] * len(leaves)
    for group in root.groups:
        members = [leaves[i] for i in group]
        member_needs = {needs[i] for i in group}
        need = member_needs.pop() if len(member_needs) == 1 else BOTH
        for i, part in zip(group, type(members[0]).evaluate_together(members, x, t, need)):
            parts[i] = _narrow(part, need, needs[i])
    return [getattr(leaf, n)(x, t) if p is None else p
            for leaf, n, p in zip(leaves, needs, parts)]


def child_parts(node: Node, x: Array, t: Array, what: str) -> list:
    """Each child's ``what`` of ``node`` from the same batched leaf calls as ``node``'s own
    (a Feynman-Kac weight needs a product's factor scores, not only their sum)."""
    leaf_parts, need = iter(_leaf_parts(node, x, t, what)), node.child_need(what)
    return [_fold(child, need, leaf_parts) for child in node.children]


@flax.struct.dataclass
class Product(Node):
    """``log pi_t = sum_i w_i log p_{i,t}`` (weights may be negative)."""

    children: tuple[Density, ...]
    weights: Array
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=False)
    groups: tuple[tuple[int, ...], ...] = flax.struct.field(pytree_node=False, default=())

    def child_need(self, what: str) -> str:
        return what

    def combine(self, parts: list, what: str) -> Any:
        if what == LOG_PROB:
            return sum(w * lp for w, lp in zip(self.weights, parts))
        if what == SCORE:
            return sum(w * s for w, s in zip(self.weights, parts))
        log_p = sum(w * lp for w, (lp, _) in zip(self.weights, parts))
        score = sum(w * s for w, (_, s) in zip(self.weights, parts))
        return log_p, score

    def score_only_leaves(self) -> list[str]:
        return [name for c in self.children for name in c.score_only_leaves()]

    def describe(self) -> str:
        terms = [f"{c.describe()}^{float(w):g}" for w, c in zip(self.weights, self.children)]
        return "(" + " * ".join(terms) + ")"


@flax.struct.dataclass
class Mixture(Node):
    """``log pi_t = logsumexp_i(log w_i + log p_{i,t})``; needs log-densities."""

    children: tuple[Density, ...]
    log_weights: Array
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)
    groups: tuple[tuple[int, ...], ...] = flax.struct.field(pytree_node=False, default=())

    def child_need(self, what: str) -> str:
        # The score is the responsibility-weighted score: it needs the log-densities too.
        return LOG_PROB if what == LOG_PROB else BOTH

    def combine(self, parts: list, what: str) -> Any:
        if what == LOG_PROB:
            return jax.nn.logsumexp(jnp.stack(parts, -1) + self.log_weights, axis=-1)
        joint = jnp.stack([lp for lp, _ in parts], -1) + self.log_weights  # [B, K]
        log_p = jax.nn.logsumexp(joint, axis=-1)
        resp = jax.nn.softmax(joint, axis=-1)
        score = sum(resp[:, i, None] * s for i, (_, s) in enumerate(parts))
        return score if what == SCORE else (log_p, score)

    def describe(self) -> str:
        return "(" + " + ".join(c.describe() for c in self.children) + ")"


def product(children: Sequence[Density], weights: Sequence[float] | None = None) -> Product:
    """Weighted product ``prod_i p_i ** w_i``; nested products are flattened."""
    children = list(children)
    if not children:
        raise ValueError("a product needs at least one density")
    weights = [1.0] * len(children) if weights is None else list(weights)
    if len(weights) != len(children):
        raise ValueError(f"{len(children)} densities but {len(weights)} weights")
    dim = _check_dims(children)
    flat_children, flat_weights = [], []
    for child, weight in zip(children, weights):
        if isinstance(child, Product):
            flat_children += list(child.children)
            flat_weights += [weight * w for w in child.weights]
        else:
            flat_children.append(child)
            flat_weights.append(weight)
    return Product(children=tuple(flat_children),
                   weights=jnp.asarray(flat_weights, jnp.float32), dim=dim,
                   has_log_prob=all(c.has_log_prob for c in flat_children),
                   groups=_leaf_groups(flat_children))


def mixture(children: Sequence[Density], weights: Sequence[float] | None = None) -> Mixture:
    """Mixture ``sum_i w_i p_i`` (weights normalized); every child needs a log-density.

    A child that is itself a :class:`Mixture` is flattened into its components,
    each weighted by ``w_i`` times its weight inside the child.
    """
    children = list(children)
    if not children:
        raise ValueError("a mixture needs at least one density")
    weights = [1.0] * len(children) if weights is None else list(weights)
    if len(weights) != len(children) or any(not w > 0 for w in weights):
        raise ValueError(f"mixture weights must be {len(children)} positive numbers, got {weights}")
    dim = _check_dims(children)
    total = float(sum(weights))
    flat_children, flat_weights = [], []
    for child, weight in zip(children, weights):
        if isinstance(child, Mixture):
            flat_children += list(child.children)
            flat_weights += [weight / total * float(w) for w in jnp.exp(child.log_weights)]
        else:
            flat_children.append(child)
            flat_weights.append(weight / total)
    children, weights = flat_children, flat_weights
    score_only = [n for c in children for n in c.score_only_leaves()]
    if score_only:
        raise ValueError(
            "a mixture needs every component's log-density, but these components are "
            f"score-only: {', '.join(score_only)}. Train them with an energy "
            "parameterization (energy_l2, energy_dae, energy_ip) or use oracles.")
    log_w = jnp.log(jnp.asarray(weights, jnp.float32))
    return Mixture(children=tuple(children), log_weights=log_w - jax.nn.logsumexp(log_w),
                   dim=dim, groups=_leaf_groups(children))


def negation(positive: Density, negative: Density, alpha: float = 0.5) -> Product:
    """``p_pos / p_neg ** alpha`` (RRR uses ``alpha = 0.5``)."""
    return product([positive, negative], [1.0, -alpha])


def classifier_free(conditional: Density, unconditional: Density, scale: float) -> Product:
    """``p(x|c)^(1+w) / p(x)^w``: ``eps = (1+w) eps_c - w eps_u``."""
    return product([conditional, unconditional], [1.0 + scale, -scale])


@flax.struct.dataclass
class LogLikelihood(Density):
    """A term ``log f(params, x, t)`` such as a classifier's ``log p(y | x_t, t)``.

    ``fn(params, x, t) -> [B]`` must be differentiable in ``x``. Guidance by a
    classifier with scale ``lam`` is ``model * LogLikelihood(...) ** lam``.
    """

    fn: Callable[[Any, Array, Array], Array] = flax.struct.field(pytree_node=False)
    params: Any
    dim: int = flax.struct.field(pytree_node=False, default=0)
    name: str = flax.struct.field(pytree_node=False, default="likelihood")
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)

    def log_prob(self, x: Array, t: Array) -> Array:
        return self.fn(self.params, x, t)

    def describe(self) -> str:
        return self.name
