"""Exact high-dimensional oracles: Gaussian mixtures in a few directions, Gaussian elsewhere.

Images put their structure in a few directions and look Gaussian in the
rest. :class:`SubspaceMixture` is that in closed form: with an orthonormal
basis ``U`` [d, k], ``y = U^T x`` follows a ``k``-dimensional Gaussian
mixture and the residual ``r = x - U y`` is ``N(0, v I)`` on the other
``d - k`` directions. Diffused to level ``t`` (``x_t = sqrt(abar_t) x_0 +
sigma_t eps``) it stays one: the mixture diffuses as in
:mod:`compdiff.oracles` and ``v_t = abar_t v + sigma_t^2``. An evaluation
costs ``O(B d k)``, so ``d = 1024`` is cheap.

Products of two of them over one basis are again one (:func:`product`),
with every level's normalizer in closed form (:func:`log_overlap`), so a
sampler's mode weights, variances along both kinds of direction and
``log Z`` are checked against exact values at any dimension. A factor with
``background_var = inf`` is flat off the subspace: a likelihood of the
structured coordinates alone, as a classifier is, so ``mixture * likelihood``
is an exactly known guided posterior.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from compdiff import oracles
from compdiff.compose import Density
from compdiff.schedules import Schedule

Array = jnp.ndarray


@flax.struct.dataclass
class SubspaceMixture(Density):
    """``GMM(U^T x) N(x - U U^T x; 0, v I)`` diffused by ``schedule``; ``v = inf``: flat."""

    basis: Array  # [d, k], orthonormal columns
    mixture: oracles.GaussianMixture  # over the k structured coordinates
    background_var: float = flax.struct.field(pytree_node=False, default=1.0)
    name: str = flax.struct.field(pytree_node=False, default="subspace")
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)

    @property
    def schedule(self) -> Schedule:
        return self.mixture.schedule

    def _split(self, x: Array) -> tuple[Array, Array]:
        y = x @ self.basis
        return y, x - y @ self.basis.T

    def _background(self, r: Array, t: Array) -> tuple[Array, Array]:
        """``(log N(r; 0, v_t I), its score)`` over the ``d - k`` residual directions."""
        if math.isinf(self.background_var):
            return jnp.zeros(r.shape[:1], r.dtype), jnp.zeros_like(r)
        var = self.schedule.abar[t] * self.background_var + self.schedule.sigma[t] ** 2
        free = self.dim - self.basis.shape[1]
        log_p = -0.5 * jnp.sum(r * r, -1) / var - 0.5 * free * jnp.log(2 * math.pi * var)
        return log_p, -r / var

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        y, r = self._split(x)
        log_y, score_y = self.mixture.log_prob_and_score(y, t)
        log_r, score_r = self._background(r, t)
        return log_y + log_r, score_y @ self.basis.T + score_r

    def log_prob(self, x: Array, t: Array) -> Array:
        return self.log_prob_and_score(x, t)[0]

    def sample(self, key: Array, num: int) -> Array:
        """Exact level-0 samples ``[num, d]`` (needs a finite background)."""
        if math.isinf(self.background_var):
            raise ValueError(f"{self.name} is flat off its subspace: it has no samples")
        k_y, k_r = jax.random.split(key)
        y = self.mixture.sample(k_y, num)
        r = jax.random.normal(k_r, (num, self.dim)) * math.sqrt(self.background_var)
        r = r - (r @ self.basis) @ self.basis.T
        return y @ self.basis.T + r

    def describe(self) -> str:
        return self.name


def random_basis(dim: int, k: int, seed: int = 0) -> np.ndarray:
    """``k`` orthonormal directions of ``R^dim`` [dim, k], random but fixed by ``seed``."""
    if not 1 <= k <= dim:
        raise ValueError(f"need 1 <= k <= dim, got k={k}, dim={dim}")
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, k)))
    return q.astype(np.float32)


def subspace_mixture(basis: np.ndarray, means, stds, schedule: Schedule, weights=None,
                     background_var: float = 1.0, name: str = "subspace") -> SubspaceMixture:
    """A mixture over the columns of ``basis`` (``means`` [K, k]) with a Gaussian background."""
    basis = np.asarray(basis, np.float32)
    if not np.allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-4):
        raise ValueError("basis columns must be orthonormal")
    if not background_var > 0:
        raise ValueError(f"background_var must be positive (inf: flat), got {background_var}")
    gmm = oracles.gaussian_mixture(means, stds, schedule, weights, name=f"{name}.structure")
    if gmm.dim != basis.shape[1]:
        raise ValueError(f"means have {gmm.dim} coordinates but the basis has "
                         f"{basis.shape[1]} directions")
    return SubspaceMixture(basis=jnp.asarray(basis), mixture=gmm,
                           background_var=float(background_var), name=name, dim=basis.shape[0])


def _same_basis(a: SubspaceMixture, b: SubspaceMixture) -> None:
    if a.dim != b.dim or not np.allclose(np.asarray(a.basis), np.asarray(b.basis), atol=1e-6):
        raise ValueError(f"{a.name} and {b.name} must share one basis")


def product(a: SubspaceMixture, b: SubspaceMixture, name: str | None = None) -> SubspaceMixture:
    """The normalized level-0 product ``a b / Z``: a subspace mixture over the same basis."""
    _same_basis(a, b)
    inv = 1.0 / a.background_var + 1.0 / b.background_var
    return SubspaceMixture(basis=a.basis, mixture=oracles.gmm_product(a.mixture, b.mixture),
                           background_var=1.0 / inv if inv > 0 else math.inf,
                           name=name or f"{a.name}*{b.name}", dim=a.dim)


def log_overlap(a: SubspaceMixture, b: SubspaceMixture, t: int) -> float:
    """``log int a_t(x) b_t(x) dx``: ``log Z`` of the level-``t`` product of two normalized
    (or, off the subspace, flat) densities, in float64."""
    _same_basis(a, b)
    schedule = a.schedule
    abar, sigma2 = float(schedule.abar[t]), float(schedule.sigma[t]) ** 2
    k = a.basis.shape[1]
    level = lambda m: (np.sqrt(abar) * np.asarray(m.mixture.means, np.float64),
                       abar * np.asarray(m.mixture.covs, np.float64) + sigma2 * np.eye(k),
                       np.asarray(m.mixture.log_weights, np.float64))
    (m1, c1, w1), (m2, c2, w2) = level(a), level(b)
    terms = []
    for i in range(len(m1)):
        for j in range(len(m2)):
            cov, diff = c1[i] + c2[j], m1[i] - m2[j]
            maha = diff @ np.linalg.solve(cov, diff)
            terms.append(w1[i] + w2[j]
                         - 0.5 * (maha + np.linalg.slogdet(cov)[1] + k * np.log(2 * np.pi)))
    log_z = float(np.logaddexp.reduce(terms))
    var = [abar * m.background_var + sigma2 for m in (a, b)]
    if all(math.isfinite(v) for v in var):  # int N(r; 0, v1) N(r; 0, v2) dr = N(0; 0, v1 + v2)
        log_z += -0.5 * (a.dim - k) * np.log(2 * np.pi * (var[0] + var[1]))
    return log_z


def mode_of(target: SubspaceMixture, x: Array) -> np.ndarray:
    """Each sample's most responsible component of ``target``'s level-0 mixture [B]."""
    y = np.asarray(x, np.float32) @ np.asarray(target.basis)
    log_comp = target.mixture._components(jnp.asarray(y), jnp.int32(0))[0]
    return np.asarray(jnp.argmax(log_comp, -1))


def reference_mode_weights(target: SubspaceMixture, key: Array, num: int = 200_000) -> np.ndarray:
    """How often :func:`mode_of` assigns exact samples to each component (``num`` of them)."""
    y = target.mixture.sample(key, num)
    log_comp = target.mixture._components(y, jnp.int32(0))[0]
    counts = np.bincount(np.asarray(jnp.argmax(log_comp, -1)), minlength=log_comp.shape[1])
    return counts / num


def mode_tv(target: SubspaceMixture, x: Array, reference: np.ndarray) -> float:
    """Total variation between the samples' mode histogram and ``reference`` weights."""
    counts = np.bincount(mode_of(target, x), minlength=reference.size)
    return 0.5 * float(np.abs(counts / counts.sum() - reference).sum())


def exact_mode_tv_floor(target: SubspaceMixture, reference: np.ndarray, num: int, key: Array,
                        repeats: int = 200) -> tuple[float, float]:
    """Mean and 95th percentile of :func:`mode_tv` for ``num`` exact samples: the error
    a perfect sampler shows at this sample size."""
    tvs = []
    for i in range(repeats):
        y = target.mixture.sample(jax.random.fold_in(key, i), num)
        log_comp = target.mixture._components(y, jnp.int32(0))[0]
        counts = np.bincount(np.asarray(jnp.argmax(log_comp, -1)), minlength=reference.size)
        tvs.append(0.5 * np.abs(counts / num - reference).sum())
    return float(np.mean(tvs)), float(np.quantile(tvs, 0.95))


def variance_ratios(target: SubspaceMixture, x: Array) -> tuple[float, float]:
    """``(structured, background)``: the samples' total variance along the subspace and their
    mean variance per residual direction, each over the exact level-0 value."""
    x = np.asarray(x, np.float64)
    basis = np.asarray(target.basis, np.float64)
    y = x @ basis
    r = x - y @ basis.T
    means = np.asarray(target.mixture.means, np.float64)
    covs = np.asarray(target.mixture.covs, np.float64)
    w = np.exp(np.asarray(target.mixture.log_weights, np.float64))
    mean = w @ means
    exact_structured = float(np.sum(w[:, None] * (np.diagonal(covs, axis1=1, axis2=2)
                                                  + (means - mean) ** 2)))
    structured = float(np.sum(np.var(y, axis=0)))
    free = target.dim - basis.shape[1]
    if free == 0:
        return structured / exact_structured, float("nan")
    background = float(np.sum(r * r) / (x.shape[0] * free))
    return structured / exact_structured, background / target.background_var
