"""Shared fixtures."""

import numpy as np
import pytest

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
