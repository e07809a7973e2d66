"""Image-sample metrics in a classifier's feature space, and the ADM evaluation npz layout.

Features are the penultimate layer of one of the project's own classifiers
(:class:`~compdiff.models.classifier.ImageClassifier` with ``features=True``), so
every number here is named "Frechet distance in <classifier> features", never
FID: FID is the same formula in Inception-v3 pool features on ImageNet-scale
images, which a user computes with the ADM suite from :func:`write_adm_npz` files.

- Frechet distance between Gaussians fitted to two feature sets (means ``m``,
  covariances ``S``)::

      d^2 = |m_1 - m_2|^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}).

  ``tr (S_1 S_2)^{1/2}`` equals ``tr (S_1^{1/2} S_2 S_1^{1/2})^{1/2}`` (the two
  matrices are similar), and the latter is a symmetric positive semi-definite
  matrix, so both square roots come from ``numpy.linalg.eigh`` with negative
  rounding eigenvalues clipped to 0. Why not ``scipy.linalg.sqrtm(S_1 @ S_2)``:
  the product is not symmetric, its Schur-based root comes back complex with
  rounding-sized imaginary parts (which FID code then discards by hand) and
  fails on the rank-deficient covariances of few samples in many dimensions;
  the symmetric route is real, deterministic and exact for singular ``S``.
- Precision and recall of Kynkaanniemi et al. 2019 (k = 3): each real feature
  ``r_i`` gets the radius ``rho_i`` of its ball to its k-th nearest other real
  feature; precision is the fraction of generated features inside at least one
  real ball (``|g - r_i| <= rho_i``), recall the fraction of real features inside
  at least one generated ball (radii from the generated set). The same rule as
  the ADM evaluation suite (which uses squared distances; the test is the same).
- :func:`write_adm_npz` / :func:`read_adm_npz`: openai/guided-diffusion's
  ``evaluations/evaluator.py`` reads ``arr_0``, uint8 ``[N, H, W, 3]`` (NHWC,
  0..255), and optionally ``arr_1``, int labels ``[N]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from compdiff.evaluation.batched import batched_apply

Array = jnp.ndarray
K_NEAREST = 3


def _features(x, what: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{what} must be a feature matrix [n >= 2, d], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} has non-finite entries")
    return x


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix by ``eigh`` (rounding negatives -> 0)."""
    vals, vecs = np.linalg.eigh(0.5 * (cov + cov.T))
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_from_moments(m1, s1, m2, s2) -> float:
    """``|m1 - m2|^2 + tr(s1 + s2 - 2 (s1^1/2 s2 s1^1/2)^1/2)`` for Gaussians ``N(m, s)``."""
    m1, m2 = np.asarray(m1, np.float64), np.asarray(m2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if m1.shape != m2.shape or s1.shape != s2.shape or s1.shape != m1.shape * 2:
        raise ValueError(f"mismatched moments: means {m1.shape} vs {m2.shape}, covariances "
                         f"{s1.shape} vs {s2.shape}")
    root1 = _psd_sqrt(s1)
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0.0, None)))
    d2 = float(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * cross)
    return max(d2, 0.0)  # rounding can leave a tiny negative for equal moments


def frechet_distance(a, b) -> float:
    """Frechet distance (squared, as FID reports it) of feature sets ``a`` [n, d], ``b`` [m, d]."""
    a, b = _features(a, "first feature set"), _features(b, "second feature set")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    return frechet_from_moments(a.mean(0), np.cov(a, rowvar=False),
                                b.mean(0), np.cov(b, rowvar=False))


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
    return np.maximum(sq, 0.0)


def _knn_radii_sq(x: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Squared distance from each row to its ``k``-th nearest *other* row."""
    radii = np.empty(len(x))
    for i in range(0, len(x), chunk):
        d = _sq_distances(x[i:i + chunk], x)
        # Column k of the sorted row: column 0 is the row itself (distance 0).
        radii[i:i + chunk] = np.partition(d, k, axis=1)[:, k]
    return radii


def _covered(points: np.ndarray, centers: np.ndarray, radii_sq: np.ndarray, chunk: int
             ) -> np.ndarray:
    """[n] whether each point lies in at least one ball ``(centers_j, radii_j)``."""
    inside = np.zeros(len(points), bool)
    for i in range(0, len(points), chunk):
        inside[i:i + chunk] = np.any(_sq_distances(points[i:i + chunk], centers)
                                     <= radii_sq[None, :], axis=1)
    return inside


def precision_recall(real, generated, k: int = K_NEAREST, chunk: int = 1024
                     ) -> tuple[float, float]:
    """Kynkaanniemi et al. (2019) ``(precision, recall)`` with k-NN balls (default k = 3)."""
    real, generated = _features(real, "real features"), _features(generated, "generated features")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {real.shape[1]} vs "
                         f"{generated.shape[1]}")
    if not 1 <= k < min(len(real), len(generated)):
        raise ValueError(f"k must be in 1..{min(len(real), len(generated)) - 1} (fewer than the "
                         f"points in each set), got {k}")
    precision = _covered(generated, real, _knn_radii_sq(real, k, chunk), chunk).mean()
    recall = _covered(real, generated, _knn_radii_sq(generated, k, chunk), chunk).mean()
    return float(precision), float(recall)


def classifier_features(module: Any, params: Any, x, t=None, batch_size: int = 256
                        ) -> np.ndarray:
    """Penultimate-layer features ``[N, F]`` of an ImageClassifier on flat images ``x`` [N, H*W*C].

    ``t``: the level for a noise-conditional classifier (``None`` for a clean one).
    """
    x = np.asarray(x, np.float32)
    fn: Callable = jax.jit(lambda xb: module.apply({"params": params}, xb, t, features=True))
    return batched_apply(fn, x, batch_size=batch_size)


def feature_metrics(real_features, generated_features, classifier_name: str) -> dict:
    """``{"frechet", "precision", "recall", "feature_space"}``, named by the feature space."""
    precision, recall = precision_recall(real_features, generated_features)
    return {"frechet": frechet_distance(real_features, generated_features),
            "precision": precision, "recall": recall,
            "feature_space": f"Frechet distance in {classifier_name} features"}


def write_adm_npz(path: str, images, labels=None) -> str:
    """Writes samples as the ADM evaluation suite reads them: ``arr_0`` uint8 ``[N, H, W, 3]``.

    ``images``: uint8 ``[N, H, W, C]`` with ``C`` 1 or 3 (grey images are repeated
    to RGB: the suite's Inception network reads three channels). Floats are
    refused: convert with :func:`compdiff.data.images.to_uint8`, which knows the
    project's ``[-1, 1]`` range. ``labels`` ``[N]`` go to ``arr_1``. Returns ``path``.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"ADM npz images must be uint8 in 0..255, got dtype {images.dtype}; "
                         "convert with compdiff.data.images.to_uint8")
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(f"ADM npz images must be NHWC [N, H, W, 1 or 3], got shape "
                         f"{images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    arrays = {"arr_0": images}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers [{images.shape[0]}], got dtype "
                             f"{labels.dtype} shape {labels.shape}")
        arrays["arr_1"] = labels.astype(np.int64)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp.npz"  # np.savez appends .npz to names without it
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def read_adm_npz(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(images uint8 [N, H, W, 3], labels [N] or None)`` from an ADM-layout npz."""
    with np.load(path) as data:
        if "arr_0" not in data:
            raise ValueError(f"{path} is not an ADM sample batch: no arr_0 "
                             f"(arrays: {sorted(data.files)})")
        images = data["arr_0"]
        labels = data["arr_1"] if "arr_1" in data else None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: arr_0 must be uint8 [N, H, W, 3], got {images.dtype} "
                         f"{images.shape}")
    return images, labels
