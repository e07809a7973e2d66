"""Shared fixtures and the two-sample checks the distribution tests use."""

import numpy as np
import pytest
import scipy.stats

from compdiff import oracles, schedules


@pytest.fixture(scope="session")
def schedule():
    return schedules.get("linear", 100)


@pytest.fixture(scope="session")
def skewed_gmm(schedule):
    """Three anisotropic, correlated, unequally weighted modes."""
    covs = [[[0.04, 0.02], [0.02, 0.05]], [[0.01, 0.0], [0.0, 0.09]],
            [[0.03, -0.01], [-0.01, 0.02]]]
    return oracles.gaussian_mixture([[-0.6, 0.0], [0.5, 0.3], [0.2, -0.7]], np.asarray(covs),
                                    schedule, weights=[0.5, 0.3, 0.2], name="skewed")


def min_ks_pvalue(x, y) -> float:
    """Smallest KS p-value over the two coordinates and their sum and difference.

    Four one-dimensional projections catch shifts, scale errors and wrong
    correlations; callers compare against a Bonferroni-style threshold.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    projections = np.array([[1, 0], [0, 1], [1, 1], [1, -1]], np.float64).T
    px, py = x @ projections, y @ projections
    return min(scipy.stats.ks_2samp(px[:, i], py[:, i]).pvalue for i in range(4))
