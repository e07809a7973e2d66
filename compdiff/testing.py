"""Two-sample checks for comparing sampler output with exact samples."""

from __future__ import annotations

import numpy as np
import scipy.stats


def min_ks_pvalue(x, y) -> float:
    """Smallest two-sample KS p-value over four 1D projections of 2D samples.

    The two coordinates, their sum and their difference catch shifts, scale
    errors and wrong correlations. Compare against a Bonferroni-style
    threshold; the samples must be independent draws for the p-value to hold.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    projections = np.array([[1, 0], [0, 1], [1, 1], [1, -1]], np.float64).T
    px, py = x @ projections, y @ projections
    return min(scipy.stats.ks_2samp(px[:, i], py[:, i]).pvalue for i in range(4))


def mode_weights_tv(x, mixture) -> float:
    """Total variation between nearest-mode frequencies of ``x`` and a Gaussian mixture's weights.

    Chains that freeze the mode weights of an intermediate level pass moment and
    KS checks far more easily than this one.
    """
    x, means = np.asarray(x), np.asarray(mixture.means)
    nearest = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), 1)
    freq = np.bincount(nearest, minlength=len(means)) / len(x)
    return float(0.5 * np.abs(freq - np.exp(np.asarray(mixture.log_weights, np.float64))).sum())
