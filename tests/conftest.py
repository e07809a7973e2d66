"""Shared fixtures, and one XLA compilation cache for the whole run.

XLA compiles dominate the suite's time: tests train the same tiny models and build
samplers of the same structure, in process and in the subprocesses the CLI tests
start. JAX's persistent compilation cache lets a later test load what an earlier one
compiled. It is set here, before any test imports jax, in a fresh directory made by
the controlling process (xdist workers and subprocesses inherit it through the
environment) and removed when the run ends, so no run reuses another's compiles.
"""

import os
import shutil
import tempfile

if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
        prefix="compdiff-test-xla-cache-")
    # A size limit turns on the cache's file lock: without it an entry is written in place,
    # and a process reading it mid-write warns and compiles again.
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
else:
    _OWN_CACHE = None

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from compdiff import oracles, schedules  # noqa: E402


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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
