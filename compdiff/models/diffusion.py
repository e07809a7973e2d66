"""Diffusion parameterizations of a network ``s = s_theta(x, t, cond)`` (docs/design.md section 1).

- ``eps``: ``eps_hat = s``. Score only; there is no log-density.
- ``energy_l2``: ``E = 0.5 ||s||^2`` (RRR's choice; bounded below).
- ``energy_dae``: ``E = 0.5 ||x - s||^2`` (the form in RRR's 2D code).
- ``energy_ip``: ``E = -<x, s>``.

For every energy form ``eps_hat = grad_x E``, and at level ``t``

    log p_t(x) = -E(x, t) / sigma_t + const,    score_t(x) = -eps_hat(x, t) / sigma_t,

so the training loss ``||eps - eps_hat||^2`` is the same for all four. ``E``
and ``grad_x E`` come out of one ``jax.vjp``: samples are independent rows, so
pulling back a vector of ones gives every sample's own gradient.

Levels ``t >= 1`` only: ``sigma_0 = 0`` and the model is not trained at level 0.

Conditional models: :meth:`DiffusionModel.condition` binds a condition vector
(:mod:`compdiff.models.conditioning`) and :meth:`DiffusionModel.unconditional`
the learned null condition; both are densities of the algebra, and a product or
mixture over several of them runs the network once on the stacked batch
(:meth:`DiffusionModel.evaluate_together`). :func:`classifier_free_product` is
the classifier-free composition of Composable Diffusion and RRR.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from compdiff.compose import Density, Product, product
from compdiff.models import conditioning
from compdiff.models.conditioning import Conditions, Label
from compdiff.schedules import Schedule

Array = jnp.ndarray
# (params, x [B, d], t [B] int, cond: Conditions [B] | array [B, c] | None) -> s [B, d]
ApplyFn = Callable[[Any, Array, Array, Array | None], Array]

_ENERGIES: dict[str, Callable[[Array, Array], Array]] = {
    "energy_l2": lambda x, s: 0.5 * jnp.sum(s**2, axis=-1),
    "energy_dae": lambda x, s: 0.5 * jnp.sum((x - s) ** 2, axis=-1),
    "energy_ip": lambda x, s: -jnp.sum(x * s, axis=-1),
}
PARAMETERIZATIONS: tuple[str, ...] = ("eps", *_ENERGIES)


def check_parameterization(name: str) -> str:
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {name!r}; known: {list(PARAMETERIZATIONS)}")
    return name


def is_energy(name: str) -> bool:
    """Whether parameterization ``name`` has a log-density (every form but ``eps``)."""
    return check_parameterization(name) != "eps"


def predict(apply_fn: ApplyFn, params: Any, parameterization: str, x: Array, t: Array,
            cond: Array | None = None) -> tuple[Array | None, Array]:
    """``(E [B], eps_hat [B, d])`` for energy forms, ``(None, eps_hat)`` for ``eps``.

    ``t`` is one level per sample, ``[B]``.
    """
    if not is_energy(parameterization):
        return None, apply_fn(params, x, t, cond)
    energy = _ENERGIES[parameterization]
    e, pullback = jax.vjp(lambda y: energy(y, apply_fn(params, y, t, cond)), x)
    (eps_hat,) = pullback(jnp.ones_like(e))
    return e, eps_hat


@dataclasses.dataclass(frozen=True)
class LinenApply:
    """``ApplyFn`` of a Flax Linen module; equal modules give equal (hashable) functions,
    so models rebuilt from the same config share compiled code under ``jax.jit``."""

    module: nn.Module

    def __call__(self, params: Any, x: Array, t: Array, cond: Array | None) -> Array:
        return self.module.apply({"params": params}, x, t, cond)


@flax.struct.dataclass
class DiffusionModel(Density):
    """A trained network as a level-``t`` density (a leaf of the composition algebra).

    ``cond`` is the condition bound into the model: :class:`Conditions`
    (from :meth:`condition` / :meth:`unconditional`) or a raw array ``[c]`` /
    ``[B, c]``, broadcast over the batch; ``None`` for an unconditional model.
    ``cond_dim`` is the length of the condition vectors the network reads (0:
    unconditional network). ``t`` is a scalar level (a Python int or traced) or
    one level per sample. ``name`` names the network; ``label`` names the bound
    condition for :meth:`describe` (``name|label``) and, being a
    :class:`~compdiff.models.conditioning.Label`, stays out of the jit cache key:
    one network under different condition values compiles once.
    """

    apply_fn: ApplyFn = flax.struct.field(pytree_node=False)
    params: Any
    schedule: Schedule
    parameterization: str = flax.struct.field(pytree_node=False)
    cond: Conditions | Array | None = None
    dim: int = flax.struct.field(pytree_node=False, default=0)
    name: str = flax.struct.field(pytree_node=False, default="model")
    cond_dim: int = flax.struct.field(pytree_node=False, default=0)
    label: Label = flax.struct.field(pytree_node=False, default=Label())

    def __post_init__(self):
        check_parameterization(self.parameterization)

    @property
    def has_log_prob(self) -> bool:
        return is_energy(self.parameterization)

    # --- conditions ----------------------------------------------------------------------
    def condition(self, value: Array, label: str | None = None) -> DiffusionModel:
        """This network given the condition ``value`` (``[c]``, or ``[B, c]`` per sample).

        ``label`` names the condition in :meth:`describe` (default: a ``[c]`` vector's
        entries); it does not enter the jit cache key.
        """
        value = jnp.asarray(value, jnp.float32)
        if not self.cond_dim:
            raise ValueError(f"{self.name} is an unconditional network; it takes no condition")
        if value.shape[-1:] != (self.cond_dim,):
            raise ValueError(f"{self.name} reads condition vectors of length {self.cond_dim}, "
                             f"got shape {value.shape}")
        if label is None:
            concrete = value.ndim == 1 and not isinstance(value, jax.core.Tracer)
            label = ",".join(f"{v:.2f}" for v in value.tolist()) if concrete else "..."
        return self.replace(cond=conditioning.given(value), name=self.base_name,
                            label=Label(str(label)))

    def unconditional(self) -> DiffusionModel:
        """This network under its learned null condition, ``p(x)``."""
        if not self.cond_dim:
            return self.replace(cond=None, label=Label())
        return self.replace(cond=conditioning.null(self.cond_dim), name=self.base_name,
                            label=Label("null"))

    @property
    def base_name(self) -> str:
        """The network's name, without a condition."""
        return self.name.split("|")[0]

    def network_key(self) -> Hashable | None:
        """Conditioned leaves of one network (same parameters object) share a key."""
        if not isinstance(self.cond, Conditions):
            return None
        return (self.apply_fn, self.parameterization, id(self.params), id(self.schedule))

    @classmethod
    def evaluate_together(cls, members: Sequence[DiffusionModel], x: Array, t: Array,
                          what: str) -> list:
        """``K`` conditions of one network as one call on the ``[K * B]`` stacked batch.

        Rows are independent samples, so one vjp of the stacked energies gives
        every row's gradient (see :func:`predict`).
        """
        first, k, b = members[0], len(members), x.shape[0]
        conds = [m.cond.broadcast(b) for m in members]
        stacked = Conditions(value=jnp.concatenate([c.value for c in conds]),
                             present=jnp.concatenate([c.present for c in conds]))
        x_k = jnp.tile(x, (k, 1))
        t_k = jnp.asarray(t, jnp.int32)
        t_k = t_k.reshape(1) if t_k.ndim == 0 else jnp.tile(jnp.broadcast_to(t_k, (b,)), k)
        sigma = first._sigma(t)
        if what == "score" and not first.has_log_prob:
            eps = first.apply_fn(first.params, x_k, t_k, stacked)
            return list(-eps.reshape(k, b, -1) / sigma)
        if what == "log_prob":
            first.require_log_prob("log_prob")
            s = first.apply_fn(first.params, x_k, t_k, stacked)
            e = _ENERGIES[first.parameterization](x_k, s).reshape(k, b)
            return list(-e / sigma[..., 0])
        first.require_log_prob(what)
        e, eps = predict(first.apply_fn, first.params, first.parameterization, x_k, t_k, stacked)
        log_p, score = -e.reshape(k, b) / sigma[..., 0], -eps.reshape(k, b, -1) / sigma
        if what == "score":
            return list(score)
        return list(zip(log_p, score))

    def _inputs(self, x: Array, t: Array) -> tuple[Array, Any]:
        """Per-sample levels ``[B]`` and the bound conditioning broadcast to the batch."""
        t = jnp.asarray(t, jnp.int32)
        # A scalar level stays one level: the network embeds it once for the batch.
        t_vec = t.reshape(1) if t.ndim == 0 else jnp.broadcast_to(t, x.shape[:1])
        if self.cond is None:
            return t_vec, None
        if isinstance(self.cond, Conditions):
            return t_vec, self.cond.broadcast(x.shape[0])
        return t_vec, jnp.broadcast_to(self.cond, x.shape[:1] + self.cond.shape[-1:])

    def _predict(self, x: Array, t: Array) -> tuple[Array | None, Array]:
        return predict(self.apply_fn, self.params, self.parameterization, x, *self._inputs(x, t))

    def _sigma(self, t: Array) -> Array:
        """``sigma_t`` with a trailing axis: ``[1]`` for a scalar level, ``[B, 1]`` per sample."""
        return self.schedule.sigma[jnp.asarray(t, jnp.int32)][..., None]

    def eps_hat(self, x: Array, t: Array) -> Array:
        """``eps_hat(x, t)`` ``[B, d]``: the network output or ``grad_x E``."""
        return self._predict(x, t)[1]

    def energy_and_eps(self, x: Array, t: Array) -> tuple[Array, Array]:
        """``(E(x, t) [B], grad_x E [B, d])`` from one vjp; energy forms only."""
        self.require_log_prob("energy_and_eps")
        return self._predict(x, t)

    def score(self, x: Array, t: Array) -> Array:
        """``score_t(x) = -eps_hat(x, t) / sigma_t``."""
        return -self.eps_hat(x, t) / self._sigma(t)

    def log_prob(self, x: Array, t: Array) -> Array:
        """``log p_t(x) = -E(x, t) / sigma_t`` (unnormalized); score-only for ``eps``."""
        if not self.has_log_prob:
            return super().log_prob(x, t)
        # Forward pass only: no gradient is needed here.
        s = self.apply_fn(self.params, x, *self._inputs(x, t))
        return -_ENERGIES[self.parameterization](x, s) / self._sigma(t)[..., 0]

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        if not self.has_log_prob:
            return super().log_prob_and_score(x, t)
        e, eps_hat = self._predict(x, t)
        sigma = self._sigma(t)
        return -e / sigma[..., 0], -eps_hat / sigma

    def describe(self) -> str:
        return f"{self.name}|{self.label}" if self.label else self.name


def classifier_free_product(model: DiffusionModel, values: Sequence[Array],
                            scale: float = 1.0) -> Product:
    """All conditions ``values`` at once, as Composable Diffusion / RRR compose them:

        log p(x) + scale * sum_i [log p(x | c_i) - log p(x)],

    i.e. ``eps = eps(x) + scale * sum_i (eps(x | c_i) - eps(x))``. With
    ``scale = 1`` it is Bayes' rule for conditions independent given ``x``,
    ``p(x | c_1..c_K) ∝ p(x) prod_i p(c_i | x)``. One network call for all
    ``K + 1`` terms.
    """
    if not values:
        raise ValueError("classifier_free_product needs at least one condition")
    conditioned = [model.condition(v) for v in values]
    k = len(conditioned)
    return product([model.unconditional(), *conditioned], [1.0 - k * scale] + [scale] * k)
