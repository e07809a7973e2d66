"""Compositional Sculpting (Garipov et al. 2023): posteriors over which model made a sample.

Base models ``p_1 .. p_m`` define a mixture ``p~(x) = sum_i w_i p_i(x)`` and
*observations* ``y_1 .. y_n`` of which model generated ``x``, each with its
own weights ``b^k`` (``b^1 = w``, the label that actually generated ``x``)::

    p~(y_k = i | x) = b^k_i p_i(x) / sum_j b^k_j p_j(x).

Conditioning on observed labels sculpts the mixture::

    p~(x | y_1 = i_1, ..., y_n = i_n)  ~  p~(x) prod_k p~(y_k = i_k | x)           (1)

With ``m = 2`` and ``w = b = (1/2, 1/2)``:

- harmonic mean ``(y_1, y_2) = (1, 2)``: ``p1 p2 / (p1 + p2)``;
- contrast ``(1, 1)``: ``p1^2 / (p1 + p2)`` (bounded by ``2 p1``; small where
  ``p2 >> p1``: "p1 but not p2"), and ``(2, 2)``: ``p2^2 / (p1 + p2)``;
- the paper's parameterized family (its 2D-grid code): ``b^2 = (a, 1 - a)``
  gives ``p1 p2 / (a p1 + (1 - a) p2)`` and ``p1^2 / (a p1 + (1 - a) p2)``
  (smaller ``a``: a sharper contrast);
- ``n`` equal observations ``(1, ..., 1)``: ``p1^n / (p1 + p2)^(n - 1)``.

Two realizations of (1) as :class:`~compdiff.compose.Density` objects:

- **algebraic** (RRR's route, :func:`algebraic`): (1) applied to level-``t``
  log-densities, ``log pi_t = logsumexp_i(log w_i + log p_{i,t}) + sum_k
  [log b^k_{i_k} + log p_{i_k,t} - logsumexp_j(log b^k_j + log p_{j,t})]``,
  with score ``sum_i (d log pi_t / d log p_i) s_i`` by the chain rule. It
  needs every base's log-density, and at ``t > 0`` it is not the diffused
  composite (it equals it at ``t = 0``); annealed MCMC samples it.
- **guided** (Sculpting's route, :func:`guided`): the composite's diffused
  score is exactly (the forward process acts on ``x``, the labels are
  functions of ``x_0``)::

      grad log p~_t(x_t | y) = sum_i p~(y = i | x_t) s_{i,t}(x_t) + grad log p~(y_1..y_n | x_t),

  with ``p~(y = i | x_t) = w_i p_{i,t} / sum_j w_j p_{j,t}`` (the mixture's
  score) and ``p~(y | x_t) = E[prod_k p~(y_k | x_0) | x_t]`` under the
  mixture's posterior over ``x_0``. Reverse diffusion on it samples the
  composite exactly when the classifier is exact. It needs only scores, and
  has no tractable log-density (so no Metropolis correction).

Classifiers for the guided route:

- :class:`ExactClassifier` (oracle bases): ``p~(y | x_t) = N_y(x_t) / N(x_t)``
  with ``N_y(x_t) = int p~(x_0) g_y(x_0) N(x_t; sqrt(abar_t) x_0, sigma_t^2 I) dx_0``,
  ``g_y = prod_k p~(y_k | x_0)``, by the midpoint rule on a 2D grid over
  ``x_0`` (separable Gaussian kernel, in log space, differentiable in ``x_t``).
- :class:`LearnedClassifier`: an MLP ``Q_phi(y_1..y_n | x_t, t)`` trained as
  the paper does (:func:`classifier_loss`): cross-entropy of the terminal
  head ``Q_phi(y | x_0)`` on base samples labelled by their model at
  ``t = 0``; at ``t > 0`` cross-entropy of the joint head on ``x_t`` from
  the same trajectory with target ``y_1`` = the generating model and
  ``y_2..y_n`` drawn from an EMA copy's terminal head at ``x_0``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from compdiff import compose, exact
from compdiff.compose import Density
from compdiff.data import toy2d
from compdiff.models import loading
from compdiff.models.diffusion import ApplyFn, LinenApply
from compdiff.models.mlp import ResidualMLP
from compdiff.schedules import Schedule
from compdiff.training import tasks

Array = jnp.ndarray
_LOG_2PI = math.log(2 * math.pi)
_KEEP = 20.0  # cells below exp(-_KEEP) of an entry's largest are dropped


# --- operators --------------------------------------------------------------------------------
def _normalized(weights: Sequence[float], num: int, what: str) -> tuple[float, ...]:
    weights = tuple(float(w) for w in weights)
    if len(weights) != num or not all(w > 0 and math.isfinite(w) for w in weights):
        raise ValueError(f"{what} must be {num} positive numbers, got {weights}")
    total = sum(weights)
    return tuple(w / total for w in weights)


@dataclasses.dataclass(frozen=True)
class Operator:
    """``p~(x | y_1 = i_1, ..., y_n = i_n)`` over ``num_models`` bases, eq. (1).

    ``observed``: the labels ``i_k``, 0-based. ``mixture_weights``: ``w``
    (default uniform). ``obs_weights``: ``b^k`` per observation (default all
    ``w``); the first must equal ``w``, since the generating label is the
    observation a learned classifier sees.
    """

    observed: tuple[int, ...]
    num_models: int = 2
    mixture_weights: tuple[float, ...] | None = None
    obs_weights: tuple[tuple[float, ...], ...] | None = None
    name: str = ""

    def __post_init__(self):
        m = self.num_models
        if not isinstance(m, int) or m < 2:
            raise ValueError(f"a sculpting operator needs num_models >= 2, got {m!r}")
        observed = tuple(self.observed)
        if not observed:
            raise ValueError("a sculpting operator needs at least one observation")
        bad = [i for i in observed if not isinstance(i, (int, np.integer)) or not 0 <= i < m]
        if bad:
            raise ValueError(f"observed labels must be model indices in 0..{m - 1}, got {bad} "
                             f"in {observed}")
        w = _normalized(self.mixture_weights or (1.0,) * m, m, "mixture_weights")
        obs = self.obs_weights or (w,) * len(observed)
        if len(obs) != len(observed):
            raise ValueError(f"{len(observed)} observations but {len(obs)} obs_weights")
        obs = tuple(_normalized(b, m, f"obs_weights[{k}]") for k, b in enumerate(obs))
        if not np.allclose(obs[0], w):
            raise ValueError(f"obs_weights[0] must equal the mixture weights {w} (the first "
                             f"observation is the label that generated x), got {obs[0]}")
        object.__setattr__(self, "observed", tuple(int(i) for i in observed))
        object.__setattr__(self, "mixture_weights", w)
        object.__setattr__(self, "obs_weights", obs)
        if not self.name:
            object.__setattr__(self, "name", "y=" + ",".join(str(i + 1) for i in observed))

    @property
    def num_obs(self) -> int:
        return len(self.observed)

    def log_composite(self, log_p: Array) -> Array:
        """Eq. (1) in log space, ``log p~(x) + sum_k log p~(y_k = i_k | x)``."""
        # log_p: [..., m], the bases' log-densities.
        log_w = jnp.log(jnp.asarray(self.mixture_weights, jnp.float32))
        total = jax.nn.logsumexp(log_p + log_w, axis=-1)
        for i, b in zip(self.observed, self.obs_weights):
            log_b = jnp.log(jnp.asarray(b, jnp.float32))
            total = total + log_b[i] + log_p[..., i] - jax.nn.logsumexp(log_p + log_b, axis=-1)
        return total

    def log_label_probs(self, log_p: Array) -> list[Array]:
        """``[log p~(y_k = . | x)]`` per observation, each [..., m]."""
        return [jax.nn.log_softmax(log_p + jnp.log(jnp.asarray(b, jnp.float32)), axis=-1)
                for b in self.obs_weights]


def posterior(observed: Sequence[int], num_models: int = 2, mixture_weights=None,
              obs_weights=None, name: str = "") -> Operator:
    """The general posterior ``p~(x | y_1 = i_1 .. y_n = i_n)`` (0-based labels)."""
    return Operator(tuple(observed), num_models,
                    None if mixture_weights is None else tuple(mixture_weights),
                    None if obs_weights is None else tuple(tuple(b) for b in obs_weights), name)


def _alpha_weights(alpha: float) -> tuple[tuple[float, float], tuple[float, float]]:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    return (0.5, 0.5), (alpha, 1.0 - alpha)


def harmonic_mean(alpha: float = 0.5) -> Operator:
    """``p1 p2 / (alpha p1 + (1 - alpha) p2)`` (``alpha = 1/2``: the harmonic mean)."""
    tag = "" if alpha == 0.5 else f"_a{alpha:g}"
    return posterior((0, 1), 2, obs_weights=_alpha_weights(alpha), name=f"harmonic_mean{tag}")


def contrast(alpha: float = 0.5, keep: int = 0) -> Operator:
    """``p_k^2 / (alpha p1 + (1 - alpha) p2)`` for ``k = keep + 1`` ("p_k but not the other")."""
    if keep not in (0, 1):
        raise ValueError(f"contrast keeps model 0 or 1, got keep={keep!r}")
    tag = "" if alpha == 0.5 else f"_a{alpha:g}"
    return posterior((keep, keep), 2, obs_weights=_alpha_weights(alpha),
                     name=f"contrast{'' if keep == 0 else '21'}{tag}")


def contrast_power(n: int) -> Operator:
    """``p1^n / (p1 + p2)^(n - 1)``: ``n`` observations of model 1."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"contrast_power needs n >= 1 observations, got {n!r}")
    return posterior((0,) * n, 2, name=f"contrast_pow{n}")


def get(name: str, alpha: float = 0.5) -> Operator:
    """An operator by name: ``harmonic_mean``, ``contrast``, ``contrast21``, ``contrast_powN``."""
    if name == "harmonic_mean":
        return harmonic_mean(alpha)
    if name == "contrast":
        return contrast(alpha)
    if name == "contrast21":
        return contrast(alpha, keep=1)
    if name.startswith("contrast_pow") and name[12:].isdigit():
        return contrast_power(int(name[12:]))
    raise ValueError(f"unknown sculpting operator {name!r}; known: harmonic_mean, contrast, "
                     "contrast21, contrast_pow<n>")


# --- the algebraic realization ----------------------------------------------------------------
def _check_bases(children: Sequence[Density], operator: Operator) -> int:
    if len(children) != operator.num_models:
        raise ValueError(f"operator {operator.name} is over {operator.num_models} models, got "
                         f"{len(children)}")
    return compose._check_dims(children)


@flax.struct.dataclass
class Algebraic(Density):
    """Eq. (1) on level-``t`` log-densities of the bases (see the module docstring)."""

    children: tuple[Density, ...]
    operator: Operator = flax.struct.field(pytree_node=False)
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)
    groups: tuple[tuple[int, ...], ...] = flax.struct.field(pytree_node=False, default=())

    def log_prob(self, x: Array, t: Array) -> Array:
        parts = compose._evaluate(self.children, self.groups, x, t, "log_prob")
        return self.operator.log_composite(jnp.stack(parts, -1))

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        parts = compose._evaluate(self.children, self.groups, x, t, "log_prob_and_score")
        log_p = jnp.stack([lp for lp, _ in parts], -1)  # [B, m]
        # Chain rule through the m numbers, not a second pass through the networks.
        value, coef = jax.vmap(jax.value_and_grad(self.operator.log_composite))(log_p)
        score = sum(coef[:, i, None] * s for i, (_, s) in enumerate(parts))
        return value, score

    def describe(self) -> str:
        return f"{self.operator.name}(" + ", ".join(c.describe() for c in self.children) + ")"


def algebraic(children: Sequence[Density], operator: Operator) -> Algebraic:
    """RRR's route: ``operator`` applied to the bases' level-``t`` log-densities."""
    children = list(children)
    dim = _check_bases(children, operator)
    score_only = [n for c in children for n in c.score_only_leaves()]
    if score_only:
        raise ValueError(
            f"the algebraic {operator.name} needs every base model's log-density, but these "
            f"are score-only: {', '.join(score_only)}. Use energy-parameterized or oracle "
            "models, or the guided realization (sculpt.guided).")
    return Algebraic(children=tuple(children), operator=operator, dim=dim,
                     groups=compose.shared_network_groups(children))


# --- the guided realization -------------------------------------------------------------------
@flax.struct.dataclass
class Guided(Density):
    """``sum_i p(y = i | x_t) s_i + grad log p(y_1..y_n | x_t)`` with ``classifier``; score-only."""

    children: tuple[Density, ...]
    classifier: Any  # ExactClassifier | LearnedClassifier
    operator: Operator = flax.struct.field(pytree_node=False)
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=False)
    groups: tuple[tuple[int, ...], ...] = flax.struct.field(pytree_node=False, default=())

    def log_prob(self, x: Array, t: Array) -> Array:
        raise TypeError(f"{self.describe()} has no tractable log-density: the guided composite "
                        "is defined by its score alone (use sculpt.algebraic for a log-density)")

    def score(self, x: Array, t: Array) -> Array:
        scores = compose._evaluate(self.children, self.groups, x, t, "score")
        log_resp, guidance = self.classifier.mixture_and_guidance(x, t, self.operator.observed)
        return sum(jnp.exp(log_resp[:, i, None]) * s for i, s in enumerate(scores)) + guidance

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        return self.log_prob(x, t), self.score(x, t)

    def score_only_leaves(self) -> list[str]:
        return [self.describe()]

    def describe(self) -> str:
        return (f"guided_{self.operator.name}(" + ", ".join(c.describe() for c in self.children)
                + ")")


def guided(children: Sequence[Density], classifier: Any, operator: Operator) -> Guided:
    """Sculpting's route: the mixture of the bases' scores plus classifier guidance."""
    children = list(children)
    dim = _check_bases(children, operator)
    if classifier.num_models != operator.num_models:
        raise ValueError(f"the classifier is over {classifier.num_models} models, the operator "
                         f"over {operator.num_models}")
    if operator.num_obs > classifier.num_obs:
        raise ValueError(f"operator {operator.name} observes {operator.num_obs} labels but the "
                         f"classifier models {classifier.num_obs}")
    return Guided(children=tuple(children), classifier=classifier, operator=operator, dim=dim,
                  groups=compose.shared_network_groups(children))


# --- the exact classifier ---------------------------------------------------------------------
def grid_centers(extent: float, size: int) -> np.ndarray:
    edges = np.linspace(-extent, extent, size + 1)
    return 0.5 * (edges[1:] + edges[:-1])


def log_quadrature(log_w: Array, points: Array, x: Array, s: Array, sigma: Array) -> Array:
    """``log sum_c exp(log_w[k, c]) N(x; s p_c, sigma^2 I)`` for ``x`` [B, 2]: [B, K].

    ``points`` [C, 2] are the kept grid cells' centers (see :func:`exact_classifier`).
    """
    sq = (jnp.sum(x * x, -1)[:, None] - 2 * s * (x @ points.T)
          + s * s * jnp.sum(points * points, -1)[None])  # [B, C]
    log_k = -0.5 * jnp.maximum(sq, 0.0) / sigma**2 - 2 * jnp.log(sigma) - _LOG_2PI
    return jax.nn.logsumexp(log_w[None] + log_k[:, None, :], axis=-1)


@flax.struct.dataclass
class ExactClassifier:
    """``p~(y_1..y_n | x_t)`` of oracle bases by quadrature over ``x_0`` on a grid.

    ``log_w[c]`` holds ``log p~_0(x_0) + log g_c(x_0) + log(cell area)`` on the
    grid cells for every joint label ``c`` (``m^n`` of them, row-major), and the
    last entry the mixture itself; only cells that hold mass are kept (below
    ``exp(-20)`` of the largest cell of every entry, a cell changes no ratio
    beyond that relative amount); at level ``t`` the ratio of the diffused entries
    is ``p~(y = c | x_t)``. The mixture responsibilities ``p~(y = i | x_t)``
    come from the oracles' exact level-``t`` densities.
    """

    bases: tuple[Density, ...]
    log_w: Array  # [m^n + 1, C]
    points: Array  # [C, 2]
    schedule: Schedule
    log_mixture_weights: Array  # [m]
    num_models: int = flax.struct.field(pytree_node=False, default=2)
    num_obs: int = flax.struct.field(pytree_node=False, default=2)

    def _level(self, t: Array) -> tuple[Array, Array]:
        t = jnp.asarray(t, jnp.int32)
        s = jnp.sqrt(self.schedule.abar[t])
        sigma = self.schedule.sigma[t]
        return jnp.reshape(s, (-1, 1)), jnp.reshape(sigma, (-1, 1))

    def log_joint(self, x: Array, t: Array, labels: Sequence[tuple[int, ...]] | None = None
                  ) -> Array:
        """``log p~(y = c | x_t)`` [B, C] for the joint labels ``c`` (default: all, row-major)."""
        idx = (np.arange(self.num_models ** self.num_obs) if labels is None
               else np.asarray([np.ravel_multi_index(c, (self.num_models,) * self.num_obs)
                                for c in labels]))
        log_w = jnp.concatenate([self.log_w[idx], self.log_w[-1:]], 0)
        s, sigma = self._level(t)
        num = log_quadrature(log_w, self.points, x, s, sigma)
        return num[:, :-1] - num[:, -1:]

    def mixture_and_guidance(self, x: Array, t: Array, observed: tuple[int, ...]
                             ) -> tuple[Array, Array]:
        log_p = jnp.stack([b.log_prob(x, t) for b in self.bases], -1)
        log_resp = jax.nn.log_softmax(log_p + self.log_mixture_weights, axis=-1)
        label = tuple(observed) + (0,) * (self.num_obs - len(observed))
        if len(observed) != self.num_obs:
            raise ValueError(f"the exact classifier was built for {self.num_obs} observations, "
                             f"the operator has {len(observed)}")
        grad = jax.grad(lambda y: jnp.sum(self.log_joint(y, t, [label])))(x)
        return log_resp, grad


def level0_log_probs(bases: Sequence[Density], extent: float, size: int) -> np.ndarray:
    """``log p_i(x_0)`` of every base at the centers of a ``size^2`` grid: [m, size, size]."""
    c = grid_centers(extent, size)
    gx, gy = np.meshgrid(c, c, indexing="ij")
    pts = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1), jnp.float32)
    return np.stack([np.asarray(b.log_prob(pts, 0)).reshape(size, size) for b in bases])


def exact_classifier(bases: Sequence[Density], operator: Operator, schedule: Schedule, *,
                     extent: float = 1.2, size: int = 96) -> ExactClassifier:
    """The exact ``p~(y | x_t)`` for ``operator``'s observation weights, by quadrature on
    ``[-extent, extent]^2`` over ``x_0`` with ``size^2`` cells.

    The grid must hold the bases' level-0 mass; cell edges on the boxes' edges
    (``extent = 1.2, size = 96``: 0.025 cells) make the box integrals exact.
    """
    if len(bases) != operator.num_models:
        raise ValueError(f"operator {operator.name} is over {operator.num_models} models, got "
                         f"{len(bases)} bases")
    log_p = jnp.asarray(level0_log_probs(bases, extent, size)).transpose(1, 2, 0)  # [n, n, m]
    log_mix = jax.nn.logsumexp(log_p + jnp.log(jnp.asarray(operator.mixture_weights)), -1)
    per_obs = operator.log_label_probs(log_p)  # n_obs x [n, n, m]
    cell = np.log((2 * extent / size) ** 2)
    entries = []
    for label in itertools.product(range(operator.num_models), repeat=operator.num_obs):
        entries.append(log_mix + sum(lp[..., i] for lp, i in zip(per_obs, label)) + cell)
    entries.append(log_mix + cell)
    log_w = np.asarray(jnp.stack(entries)).reshape(len(entries), -1)
    keep = np.any(log_w > log_w.max(axis=1, keepdims=True) - _KEEP, axis=0)
    c = grid_centers(extent, size)
    gx, gy = np.meshgrid(c, c, indexing="ij")
    points = np.stack([gx.ravel(), gy.ravel()], -1)[keep]
    return ExactClassifier(bases=tuple(bases), log_w=jnp.asarray(log_w[:, keep], jnp.float32),
                           points=jnp.asarray(points, jnp.float32),
                           schedule=schedule,
                           log_mixture_weights=jnp.log(jnp.asarray(operator.mixture_weights,
                                                                   jnp.float32)),
                           num_models=operator.num_models, num_obs=operator.num_obs)


# --- exact targets on grids -------------------------------------------------------------------
def diffused_table(log_p0: np.ndarray, extent0: float, schedule: Schedule, t: int,
                   extent: float, size: int) -> np.ndarray:
    """``log`` of the level-``t`` diffusion of the level-0 density ``exp(log_p0)`` (on the
    ``[-extent0, extent0]^2`` grid of ``log_p0.shape[0]^2`` cells) at the centers of a
    ``size^2`` grid on ``[-extent, extent]^2`` (float64, separable: ``K_a P K_b^T``)."""
    n0 = log_p0.shape[0]
    c0, c = grid_centers(extent0, n0), grid_centers(extent, size)
    s, sigma = float(np.sqrt(schedule.abar[t])), float(schedule.sigma[t])
    if sigma <= 0:
        raise ValueError("diffused_table needs a level t >= 1 (sigma_t > 0)")
    log_k = (-0.5 * ((c[:, None] - s * c0[None]) / sigma) ** 2 - np.log(sigma) - 0.5 * _LOG_2PI)
    lp = np.asarray(log_p0, np.float64) + 2 * np.log(2 * extent0 / n0)
    top = lp.max()
    with np.errstate(divide="ignore"):
        return np.log(np.exp(log_k) @ np.exp(lp - top) @ np.exp(log_k).T) + top


@flax.struct.dataclass
class Tabulated(Density):
    """A 2D density given by its values on a grid (nearest cell; ``-inf`` outside)."""

    log_table: Array  # [n, n], x along axis 0
    extent: float = flax.struct.field(pytree_node=False, default=2.0)
    dim: int = flax.struct.field(pytree_node=False, default=2)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)
    name: str = flax.struct.field(pytree_node=False, default="tabulated")

    def log_prob(self, x: Array, t: Array) -> Array:
        n = self.log_table.shape[0]
        ij = jnp.floor((x + self.extent) / (2 * self.extent) * n).astype(jnp.int32)
        inside = jnp.all((ij >= 0) & (ij < n), axis=-1)
        ij = jnp.clip(ij, 0, n - 1)
        return jnp.where(inside, self.log_table[ij[:, 0], ij[:, 1]], -jnp.inf)

    def describe(self) -> str:
        return self.name


def diffused_target(bases: Sequence[Density], operator: Operator, schedule: Schedule, t: int, *,
                    extent: float = 2.0, size: int = 300, extent0: float = 1.2,
                    size0: int = 96):
    """The exact level-``t`` target of the guided route: the composite (1) of the bases'
    level-0 densities, diffused to level ``t``, as an :class:`~compdiff.exact.GridTarget`."""
    log_p = level0_log_probs(bases, extent0, size0).transpose(1, 2, 0)
    log_c = np.asarray(operator.log_composite(jnp.asarray(log_p)), np.float64)
    table = diffused_table(log_c, extent0, schedule, t, extent, size)
    return exact.on_grid(Tabulated(log_table=jnp.asarray(table, jnp.float32), extent=extent,
                                   name=f"{operator.name} at level {t}"),
                         t, extent=extent, size=size)


# --- the learned classifier -------------------------------------------------------------------
class SculptClassifier(nn.Module):
    """``(x [B, d], t [B] or [1]) -> [B, m + m^n]`` logits: the terminal head ``l(x_0)``
    (``m``: ``softmax(l + log b^k)`` is ``Q(y_k | x_0)``) and the joint head
    ``Q(y_1..y_n | x_t, t)`` (``m^n``, row-major), from one :class:`ResidualMLP`."""

    dim: int  # the input dimension (the training loop initializes with [1, dim])
    num_models: int = 2
    num_obs: int = 2
    hidden: int = 128
    num_blocks: int = 3
    num_levels: int = 100
    time_embedding: str = "sinusoidal"

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Array | None = None) -> Array:
        out = self.num_models + self.num_models ** self.num_obs
        return ResidualMLP(dim=out, hidden=self.hidden, num_blocks=self.num_blocks,
                           time_embedding=self.time_embedding,
                           num_levels=self.num_levels)(x, t)


@flax.struct.dataclass
class LearnedClassifier:
    """``Q_phi(y_1..y_n | x_t, t)`` (the joint head) as a guidance classifier."""

    apply_fn: ApplyFn = flax.struct.field(pytree_node=False)
    params: Any
    num_models: int = flax.struct.field(pytree_node=False, default=2)
    num_obs: int = flax.struct.field(pytree_node=False, default=2)

    def log_joint(self, x: Array, t: Array) -> Array:
        """``log Q(y_1..y_n | x_t, t)`` [B, m^n] (row-major); ``t >= 1``."""
        t = jnp.broadcast_to(jnp.asarray(t, jnp.int32).reshape(-1), x.shape[:1])
        logits = self.apply_fn(self.params, x, t, None)
        return jax.nn.log_softmax(logits[:, self.num_models:], axis=-1)

    def terminal_log_probs(self, x: Array, log_weights: Array) -> Array:
        """``log Q(y = . | x_0)`` [B, m] for an observation with weights ``exp(log_weights)``."""
        logits = self.apply_fn(self.params, x, jnp.zeros(x.shape[:1], jnp.int32), None)
        return jax.nn.log_softmax(logits[:, :self.num_models] + log_weights, axis=-1)

    def mixture_and_guidance(self, x: Array, t: Array, observed: tuple[int, ...]
                             ) -> tuple[Array, Array]:
        shape = (self.num_models,) * self.num_obs
        if len(observed) != self.num_obs:
            raise ValueError(f"the classifier was trained for {self.num_obs} observations, the "
                             f"operator has {len(observed)}")
        index = int(np.ravel_multi_index(observed, shape))

        def log_q(y):
            joint = self.log_joint(y, t)
            return jnp.sum(joint[:, index]), joint

        grad, joint = jax.grad(log_q, has_aux=True)(x)
        # p(y_1 = i | x_t): the joint's marginal over y_2..y_n (the paper's mixture weights).
        log_resp = jax.nn.logsumexp(joint.reshape((-1, self.num_models, self.num_models
                                                   ** (self.num_obs - 1))), axis=-1)
        return log_resp, grad


@flax.struct.dataclass
class Bases:
    """The base oracles as training data of the classifier (a pytree; ``dim`` like a dataset)."""

    bases: tuple[Density, ...]
    dim: int = flax.struct.field(pytree_node=False, default=2)


def classifier_loss(params: Any, ema_params: Any, apply_fn: ApplyFn, data: Bases,
                    schedule: Schedule, key: Array, batch_size: int, operator: Operator
                    ) -> Array:
    """The paper's classifier loss on one batch (mean over ``batch_size`` trajectories).

    For each trajectory: its model ``i ~ w``, ``x_0 ~ p_i`` (exact oracle
    samples), ``t ~ U{1..T}``, ``x_t ~ q(x_t | x_0)`` (the forward process: an
    oracle's reverse trajectory has the same joint law), and::

        L = -log softmax(l(x_0) + log w)_i
            - sum_c T(c) log Q(y = c | x_t, t),
        T(y_1..y_n) = [y_1 = i] prod_{k >= 2} softmax(l_ema(x_0) + log b^k)_{y_k},

    where ``l_ema`` is the terminal head under the EMA parameters
    (``ema_params``, held fixed): the bootstrapped targets of the paper.
    """
    m, n = operator.num_models, operator.num_obs
    k_lab, k_x, k_t, k_eps = jax.random.split(key, 4)
    log_w = jnp.log(jnp.asarray(operator.mixture_weights, jnp.float32))
    labels = jax.random.categorical(k_lab, log_w, shape=(batch_size,))
    xs = jnp.stack([b.sample(jax.random.fold_in(k_x, i), batch_size)
                    for i, b in enumerate(data.bases)])  # [m, B, d]
    x0 = xs[labels, jnp.arange(batch_size)]
    t = jax.random.randint(k_t, (batch_size,), 1, schedule.num_levels + 1)
    x_t = (jnp.sqrt(schedule.abar[t])[:, None] * x0
           + schedule.sigma[t][:, None] * jax.random.normal(k_eps, x0.shape))
    levels = jnp.concatenate([jnp.zeros_like(t), t])
    logits = apply_fn(params, jnp.concatenate([x0, x_t]), levels, None)
    terminal = jax.nn.log_softmax(logits[:batch_size, :m] + log_w, axis=-1)
    loss_term = -jnp.take_along_axis(terminal, labels[:, None], axis=-1)[:, 0]
    ema_term = jax.lax.stop_gradient(
        apply_fn(ema_params, x0, jnp.zeros_like(t), None)[:, :m])
    target = jax.nn.one_hot(labels, m)
    for b in operator.obs_weights[1:]:
        probs = jax.nn.softmax(ema_term + jnp.log(jnp.asarray(b, jnp.float32)), axis=-1)
        target = (target[..., None] * probs.reshape((batch_size,) + (1,) * (target.ndim - 1)
                                                     + (m,)))
    joint = jax.nn.log_softmax(logits[batch_size:, m:], axis=-1)
    loss_joint = -jnp.sum(target.reshape(batch_size, m ** n) * joint, axis=-1)
    return jnp.mean(loss_term + loss_joint)


# --- training through compdiff.train (task = "sculpt_classifier") -----------------------------
def bases_from_config(config, schedule: Schedule) -> Bases:
    """``data.bases``: the names of the base 2D datasets (oracles, :mod:`compdiff.data.toy2d`)."""
    names = list(config.data.get("bases") or ())
    if len(names) < 2:
        raise ValueError(f"task sculpt_classifier needs data.bases, two or more 2D datasets, "
                         f"got {names}")
    return Bases(bases=tuple(toy2d.get(n, schedule) for n in names), dim=2)


def operator_from_config(config) -> Operator:
    """The observation structure the classifier learns: ``sculpt.num_obs`` labels over
    ``len(data.bases)`` models with ``sculpt.mixture_weights`` / ``sculpt.obs_weights``
    (empty: uniform)."""
    s = config.sculpt
    m, n = len(config.data.bases), int(s.num_obs)
    return posterior((0,) * n, m, mixture_weights=tuple(s.get("mixture_weights") or ()) or None,
                     obs_weights=tuple(tuple(b) for b in s.get("obs_weights") or ()) or None)


def network_from_config(config, dim: int) -> SculptClassifier:
    m = config.model
    return SculptClassifier(dim=dim, num_models=len(config.data.bases),
                            num_obs=int(config.sculpt.num_obs), hidden=m.hidden,
                            num_blocks=m.num_blocks, num_levels=config.schedule.num_levels,
                            time_embedding=m.get("time_embedding", "sinusoidal"))


def load_classifier(workdir: str) -> LearnedClassifier:
    """The classifier trained in ``workdir`` (its EMA parameters)."""
    config, network, params = loading.load_params(workdir)
    if tasks.task_name(config) != "sculpt_classifier":
        raise ValueError(f"{workdir} holds a {tasks.task_name(config)} run, not a "
                         f"sculpt_classifier")
    return LearnedClassifier(apply_fn=LinenApply(network), params=params,
                             num_models=len(config.data.bases),
                             num_obs=int(config.sculpt.num_obs))


@dataclasses.dataclass(frozen=True)
class SculptLoss:
    """:func:`classifier_loss` as the task's loss: base samples drawn on the devices,
    targets bootstrapped from the EMA copy (a static, hashable part of the jitted step)."""

    operator: Operator

    @classmethod
    def from_config(cls, config) -> SculptLoss:
        return cls(operator_from_config(config))

    def __call__(self, params: Any, inputs: tasks.StepInputs) -> Array:
        return classifier_loss(params, inputs.ema_params, inputs.apply_fn, inputs.data,
                               inputs.schedule, inputs.loss_key, inputs.batch_size,
                               self.operator)


SCULPT_CLASSIFIER = tasks.register_task(tasks.Task(
    name="sculpt_classifier", data=bases_from_config,
    network=lambda config, dim: network_from_config(
        config, tasks.model_dim(config) if dim is None else dim),
    loss=SculptLoss.from_config))
