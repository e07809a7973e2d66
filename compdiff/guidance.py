"""Classifier guidance as a term of the composition algebra (issue 12).

A classifier with logits ``l(x_t, t) in R^C`` gives, for a class ``y``, the
level-``t`` log-density term

    log p_phi(y | x_t, t) = l_y - logsumexp_c l_c                    (log_softmax)

with score ``grad_x log p_phi(y | x_t, t) = J^T (e_y - softmax(l))``, ``J = dl/dx``
(one vjp). A binary classifier with one logit ``l`` reads as the logits
``(0, l)``: ``log p(1 | x) = log sigmoid(l)``, ``log p(0 | x) = log sigmoid(-l)``.

``Classifier.given(y)`` is a :class:`~compdiff.compose.Density`, so guidance is
algebra (RRR section 5.3, ``log p_t(x | y) = log p_t(x) + lam log p_t(y | x)``):

- ``model * clf.given(y) ** lam``: classifier guidance with scale ``lam``;
- ``model * clf.given(y1) * clf.given(y2)``: several classes of one classifier,
  evaluated as ONE network call (:meth:`ClassTerm.evaluate_together`: the logits
  once, each term reads its column, and one batched vjp gives every term's score);
- ``model * shape.given(a) * colour.given(b)``: one classifier per attribute;
- ``model * clf.given(y) ** -1``: negation ("not y").

With an energy model the guided density has a log-density, so Metropolis-adjusted
samplers (MALA, HMC) and SMC apply.

``y`` is a class id (every chain) or an int array ``[B]``, one label per chain.
Per-chain labels give each chain its own target, so do not combine them with SMC
resampling (``resample_ess > 0``): resampling copies a chain into another chain's
slot, where it meets that slot's label. Use one class per run with SMC.

Only noise-conditional classifiers (``num_levels > 0``) can guide: the annealed
samplers evaluate every term at levels ``t >= 1``, where guidance needs
``p(y | x_t, t)``, and a clean classifier ``p(y | x_0)`` read at a noisy ``x_t``
is a different (unnormalized, uncalibrated) function. ``given`` on a clean
classifier is therefore an error; clean classifiers judge samples through
:meth:`Classifier.log_probs` at level 0.

The exact classifier of a Gaussian-mixture oracle (its posterior over components,
:meth:`compdiff.oracles.GaussianMixture.component_classifier`) is a
:class:`Classifier` too, which is what the sampler tests use.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from compdiff.compose import Density
from compdiff.models.conditioning import Label
from compdiff.models.diffusion import ApplyFn, LinenApply

Array = jnp.ndarray


def _concrete(value: Any) -> bool:
    return not isinstance(value, jax.core.Tracer)


@flax.struct.dataclass
class Classifier:
    """A network ``(params, x [B, d], t [B] or [1] int, cond) -> logits [B, num_outputs]``.

    ``num_outputs = 1`` is a binary single-logit classifier (2 classes).
    ``num_levels``: the levels ``1..num_levels`` it was trained on (0: a clean
    classifier, not noise-conditional).
    """

    apply_fn: ApplyFn = flax.struct.field(pytree_node=False)
    params: Any
    num_outputs: int = flax.struct.field(pytree_node=False, default=2)
    dim: int = flax.struct.field(pytree_node=False, default=0)
    num_levels: int = flax.struct.field(pytree_node=False, default=0)
    name: str = flax.struct.field(pytree_node=False, default="classifier")

    def __post_init__(self):
        if not isinstance(self.num_outputs, int) or self.num_outputs < 1:
            raise ValueError(f"{self.name}: num_outputs must be a positive int, "
                             f"got {self.num_outputs!r}")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"{self.name}: dim must be a positive int, got {self.dim!r}")

    @classmethod
    def from_module(cls, module: Any, params: Any, name: str = "classifier") -> Classifier:
        """From an :class:`~compdiff.models.classifier.ImageClassifier` and its parameters."""
        return cls(apply_fn=LinenApply(module), params=params, num_outputs=module.num_outputs,
                   dim=module.dim, num_levels=module.num_levels, name=name)

    @property
    def num_classes(self) -> int:
        return 2 if self.num_outputs == 1 else self.num_outputs

    @property
    def noise_conditional(self) -> bool:
        return self.num_levels > 0

    def log_probs(self, x: Array, t: Array | int = 0) -> Array:
        """``log p(c | x_t, t)`` for every class ``c``, ``[B, num_classes]``.

        ``t`` is one level (scalar) or one per sample ``[B]``; a clean classifier
        ignores it.
        """
        t = jnp.asarray(t, jnp.int32)
        if _concrete(t) and t.size and int(jnp.max(t)) > self.num_levels:
            what = ("a clean classifier (not noise-conditional)" if not self.num_levels
                    else f"trained on levels 1..{self.num_levels}")
            raise ValueError(f"{self.name} is {what}; it cannot be read at level "
                             f"{int(jnp.max(t))}")
        # A scalar level stays one level (the network embeds it once for the batch).
        t_vec = t.reshape(1) if t.ndim == 0 else jnp.broadcast_to(t, x.shape[:1])
        logits = self.apply_fn(self.params, x, t_vec, None)
        if logits.shape != (x.shape[0], self.num_outputs):
            raise ValueError(f"{self.name} returned logits of shape {logits.shape}, expected "
                             f"{(x.shape[0], self.num_outputs)}")
        if self.num_outputs == 1:
            logits = jnp.concatenate([jnp.zeros_like(logits), logits], axis=-1)
        return jax.nn.log_softmax(logits, axis=-1)

    def given(self, y: int | Array) -> ClassTerm:
        """The term ``log p(y | x_t, t)``; ``y`` a class id or ``[B]`` ids, one per chain."""
        if not self.noise_conditional:
            raise ValueError(
                f"{self.name} is a clean classifier (num_levels=0): guidance needs "
                "p(y | x_t, t) at every level t >= 1. Train a noise-conditional classifier "
                "(num_levels > 0); use clean ones to judge samples (log_probs at t=0)")
        if _concrete(y):
            raw = np.asarray(y)
            if raw.ndim > 1 or not (np.issubdtype(raw.dtype, np.integer)
                                    or np.issubdtype(raw.dtype, np.bool_)):
                raise ValueError(f"{self.name}: labels must be an int or an int array [B], "
                                 f"got dtype {raw.dtype} shape {raw.shape}")
            bad = raw[(raw < 0) | (raw >= self.num_classes)]
            if bad.size:
                raise ValueError(f"{self.name}: class {int(bad.ravel()[0])} out of range; it "
                                 f"has {self.num_classes} classes (0..{self.num_classes - 1})")
            label = str(int(raw)) if raw.ndim == 0 else f"[{raw.shape[0]} labels]"
        else:
            label = "..."
        # The class is the array leaf y; its text is only a label, out of the jit cache key,
        # so guidance towards different classes shares one compiled sampler.
        return ClassTerm(classifier=self, y=jnp.asarray(y, jnp.int32), dim=self.dim,
                         name=self.name, label=Label(f"y={label}"))


@flax.struct.dataclass
class ClassTerm(Density):
    """``log p_phi(y | x_t, t)`` of a :class:`Classifier`, a leaf of the algebra.

    ``name`` names the classifier and ``label`` the class (``y=3``), for
    :meth:`describe` (``classifier(y=3)``); the class itself is the array ``y``.
    """

    classifier: Classifier
    y: Array  # int32 [] or [B]
    dim: int = flax.struct.field(pytree_node=False, default=0)
    name: str = flax.struct.field(pytree_node=False, default="classifier")
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)
    label: Label = flax.struct.field(pytree_node=False, default=Label())

    def labels(self, batch: int) -> Array:
        """The labels broadcast to ``[batch]``; a per-chain array must have ``batch`` entries."""
        if self.y.ndim == 1 and self.y.shape[0] != batch:
            raise ValueError(f"{self.describe()}: {self.y.shape[0]} labels (one per chain) but a "
                             f"batch of {batch} chains")
        return jnp.broadcast_to(self.y, (batch,))

    def network_key(self) -> Hashable | None:
        """Every class of one classifier (same parameters object) shares one call."""
        clf = self.classifier
        return (ClassTerm, clf.apply_fn, id(clf.params), clf.num_outputs, clf.num_levels)

    @classmethod
    def evaluate_together(cls, members: Sequence[ClassTerm], x: Array, t: Array,
                          what: str) -> list:
        """Each member's ``what`` from ONE forward pass and one batched backward pass.

        The members differ only in their labels, so the log-probabilities
        ``[B, C]`` are computed once; member ``k`` reads column ``y_k``, and its
        score is the pullback of the one-hot cotangent ``e_{y_k}`` (rows are
        independent samples, so each row gets its own gradient), all ``K``
        pullbacks as one ``vmap``.
        """
        clf = members[0].classifier
        labels = [m.labels(x.shape[0]) for m in members]
        pick = lambda lp, y: jnp.take_along_axis(lp, y[:, None], axis=1)[:, 0]  # noqa: E731
        if what == "log_prob":
            log_p = clf.log_probs(x, t)
            return [pick(log_p, y) for y in labels]
        log_p, pullback = jax.vjp(lambda z: clf.log_probs(z, t), x)
        onehots = jnp.stack([jax.nn.one_hot(y, clf.num_classes, dtype=log_p.dtype)
                             for y in labels])
        (scores,) = jax.vmap(pullback)(onehots)  # [K, B, d]
        if what == "score":
            return list(scores)
        return [(pick(log_p, y), s) for y, s in zip(labels, scores)]

    def log_prob(self, x: Array, t: Array) -> Array:
        return self.evaluate_together([self], x, t, "log_prob")[0]

    def score(self, x: Array, t: Array) -> Array:
        return self.evaluate_together([self], x, t, "score")[0]

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        return self.evaluate_together([self], x, t, "log_prob_and_score")[0]

    def describe(self) -> str:
        return f"{self.name}({self.label or 'y'})"
