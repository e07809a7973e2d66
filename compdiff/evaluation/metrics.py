"""Sample-quality metrics against an exact 2D target (RRR Table 1).

All three compare samples ``x`` [n, 2] from a sampler with an exact target
:class:`~compdiff.exact.GridTarget` ``pi`` (or with exact samples ``y`` from it):

- ``ll``: ``mean_i log pi(x_i)``, the exact *normalized* log-density of the
  samples. For exact samples it estimates ``-H(pi)`` (:func:`exact_ll`), so
  ``ll`` near ``ll_exact`` is good and far below it is bad. A non-finite
  sample has log-density ``-inf``, so ``ll = -inf``: a clear failure that
  does not crash the evaluation.
- ``mmd``: the *unbiased* estimate of the squared maximum mean discrepancy
  (Gretton et al. 2012, eq. 3) between ``x`` and ``y`` with the kernel
  ``k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2))`` summed over the fixed
  bandwidths :data:`BANDWIDTHS` (spanning a ring mode's std, 0.03, to the
  ring's radius, 0.5), fixed rather than median-heuristic so numbers compare
  across samplers and runs. Being unbiased it is ~0 (and may be slightly
  negative) for samples from the same distribution.
- ``var``: RRR's "L2 difference of variance of GMMs fit on generated samples
  compared to GMMs of the composed distribution", made precise: fit a
  ``K``-component full-covariance Gaussian mixture (scikit-learn, fixed seed)
  to ``x`` and another to ``y``, match components one-to-one by the
  Hungarian algorithm on the distances between their means, and average
  over matched pairs the L2 norm of the difference of their per-dimension
  variance vectors (the covariance diagonals): ``var = mean_k
  || diag S^x_{pi(k)} - diag S^y_k ||_2``.

- ``mode_tv``: total variation between the mode weights of the samples and
  of the target, where the target has several modes. ``ll`` cannot see mode
  weights (all samples in one mode score like exact samples) and rewards
  samples that are too concentrated; ``mode_tv`` sees exactly that. Modes
  are the connected components of the target's superlevel set
  ``{pi > MODE_LEVEL * max pi}`` on its grid; every cell belongs to the mode
  nearest to it, so the modes partition the plane, and a sample's mode is
  that of its cell (samples outside the grid or not finite fall in an
  extra "nowhere" mode of target weight 0).

Any non-finite sample makes ``mmd`` and ``var`` ``+inf`` as well.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from compdiff.exact import GridTarget

if TYPE_CHECKING:
    from sklearn.mixture import GaussianMixture

BANDWIDTHS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5)
#: Superlevel fraction of the peak density whose connected components are modes.
MODE_LEVEL = 0.05


def _as_points(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"samples must have shape [n >= 2, d], got {x.shape}")
    return x


def all_finite(x) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x))))


def ll(x, target: GridTarget) -> float:
    """``mean_i log pi(x_i)`` (normalized); ``-inf`` if any sample or density is not finite."""
    x = _as_points(x)
    if not all_finite(x):
        return -np.inf
    log_p = np.asarray(target.log_prob(x.astype(np.float32)), np.float64)
    # A finite sample whose density underflows has log-density -inf: that
    # is the honest score of a sample the target gives no mass.
    return float(np.mean(np.where(np.isnan(log_p), -np.inf, log_p)))


def exact_ll(target: GridTarget, key, num: int) -> float:
    """``ll`` of ``num`` exact samples: the reference ``-H(pi)`` a sampler aims for."""
    return ll(target.sample(key, num), target)


def _kernel_sum(a: np.ndarray, b: np.ndarray, bandwidths) -> np.ndarray:
    sq = np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2 * a @ b.T
    sq = np.maximum(sq, 0.0)  # rounding can make tiny distances negative
    return sum(np.exp(-sq / (2 * h * h)) for h in bandwidths)


def mmd(x, y, bandwidths: tuple[float, ...] = BANDWIDTHS) -> float:
    """Unbiased MMD^2 between samples ``x`` [n, d] and ``y`` [m, d].

    ``MMD_u^2 = sum_{i!=j} k(x_i,x_j) / (n(n-1)) + sum_{i!=j} k(y_i,y_j) / (m(m-1))
    - 2 sum_{i,j} k(x_i,y_j) / (nm)``.
    """
    x, y = _as_points(x), _as_points(y)
    if not (all_finite(x) and all_finite(y)):
        return np.inf
    n, m = len(x), len(y)
    kxx, kyy, kxy = (_kernel_sum(a, b, bandwidths) for a, b in ((x, x), (y, y), (x, y)))
    # The diagonal terms k(x_i, x_i) = len(bandwidths) are what the unbiased
    # estimator leaves out.
    within_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def _fit_gmm(x: np.ndarray, components: int, seed: int) -> GaussianMixture:
    # imported here: sklearn costs about a second at import, and every script that reaches
    # this module (sample.py, the CLI's error paths) would pay it before doing anything
    from sklearn.mixture import GaussianMixture

    # reg_covar well below the smallest variance of interest (a ring mode,
    # 0.03^2 ~ 1e-3) keeps degenerate fits finite without biasing real ones.
    return GaussianMixture(n_components=components, covariance_type="full", reg_covar=1e-6,
                           n_init=2, random_state=seed).fit(x)


def gmm_variance(x, y, components: int, seed: int = 0) -> float:
    """RRR's Var: mean over Hungarian-matched GMM components of ``||diag S^x - diag S^y||_2``."""
    x, y = _as_points(x), _as_points(y)
    if not (all_finite(x) and all_finite(y)):
        return np.inf
    if components < 1 or components > min(len(x), len(y)):
        raise ValueError(f"need 1 <= components <= number of samples, got {components}")
    fx, fy = _fit_gmm(x, components, seed), _fit_gmm(y, components, seed)
    cost = np.linalg.norm(fx.means_[:, None] - fy.means_[None], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    var_x = np.diagonal(fx.covariances_, axis1=1, axis2=2)[rows]
    var_y = np.diagonal(fy.covariances_, axis1=1, axis2=2)[cols]
    return float(np.mean(np.linalg.norm(var_x - var_y, axis=-1)))


def mode_partition(target: GridTarget) -> tuple[np.ndarray, np.ndarray]:
    """``(labels [n, n] in 0..K-1, weights [K])``: every grid cell's mode and each mode's mass."""
    mass = np.exp(np.asarray(target.log_mass, np.float64))
    peaks, count = ndimage.label(mass > MODE_LEVEL * mass.max(), structure=np.ones((3, 3)))
    # Each cell takes the label of the nearest cell inside a mode.
    _, (i, j) = ndimage.distance_transform_edt(peaks == 0, return_indices=True)
    labels = peaks[i, j] - 1
    return labels, np.bincount(labels.ravel(), weights=mass.ravel(), minlength=count)


def mode_tv(x, target: GridTarget) -> float | None:
    """Total variation between the samples' and the target's mode weights (None: one mode)."""
    labels, weights = mode_partition(target)
    if len(weights) < 2:
        return None
    x = np.asarray(x, np.float64)
    n = labels.shape[0]
    cell = np.floor((x - np.asarray(target.lows)) / np.asarray(target.cell))
    inside = np.all(np.isfinite(cell) & (cell >= 0) & (cell < n), axis=-1)
    ij = np.where(inside[:, None], cell, 0).astype(int)
    modes = np.where(inside, labels[ij[:, 0], ij[:, 1]], len(weights))
    freq = np.bincount(modes, minlength=len(weights) + 1) / len(x)
    return float(0.5 * np.abs(freq - np.append(weights / weights.sum(), 0.0)).sum())


def evaluate(x, target: GridTarget, reference, components: int, seed: int = 0) -> dict:
    """``{"ll", "mode_tv", "mmd", "var", "nonfinite"}`` of samples ``x`` against
    ``target`` and exact ``reference`` samples drawn from it."""
    x = np.asarray(x)
    return {"ll": ll(x, target), "mode_tv": mode_tv(x, target), "mmd": mmd(x, reference),
            "var": gmm_variance(x, reference, components, seed),
            "nonfinite": int(np.sum(~np.all(np.isfinite(x), axis=-1)))}


def proportion_verdict(a: float, b: float, n: int) -> str:
    """Whether accuracy ``a`` beats ``b`` (each a proportion of ``n`` images): ``"holds"``
    when ``a - b`` exceeds two standard errors of the difference, ``"fails"`` when ``b - a``
    does, otherwise ``"unresolved"`` with the two-s.e. margin (the tables' claim checks)."""
    se = math.sqrt(max(a * (1 - a) + b * (1 - b), 1e-12) / n)
    if a - b > 2 * se:
        return "holds"
    return "fails" if b - a > 2 * se else f"unresolved (|difference| < 2 s.e. = {2 * se:.2f})"
