"""The 2D datasets of RRR's synthetic experiments, each an exact oracle.

A toy dataset *is* its oracle (:mod:`compdiff.oracles`): training draws fresh
exact samples from it every step (there is nothing to store, so no tfds
builder), and evaluation uses its exact diffused density.

- ``ring``: 8 Gaussians (std 0.03) at angles ``k * 45`` degrees on a circle of radius 0.5.
- ``left_half_ring`` / ``right_half_ring``: the ring's 4 modes at angles in
  ``[90, 270)`` / ``[-90, 90)`` degrees (each half holds one of the two
  modes on the y axis, so the halves partition the ring).
- ``bar``: uniform on ``[-0.1, 0.1] x [-1, 1]``.
- ``left_bar`` / ``right_bar``: uniform on ``[-0.3, -0.1]`` / ``[0.1, 0.3]`` ``x [-1, 1]``.
- ``big_box`` / ``small_box``: uniform on ``[-w, w]^2`` with ``w = 0.7`` / ``0.3``.
- ``h_stripes`` / ``v_stripes``: 3 Gaussians centred on the y / x axis at ``-0.5, 0, 0.5``,
  std ``STRIPE_STD`` across the stripe and ``STRIPE_LENGTH`` along it; their product is a
  3 x 3 grid of modes (Du & Kaelbling's data-efficiency example: factors of 3 modes, a
  product of 9).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compdiff import oracles
from compdiff.compose import Density
from compdiff.schedules import Schedule

RING_RADIUS = 0.5
RING_STD = 0.03
STRIPE_OFFSETS = (-0.5, 0.0, 0.5)
STRIPE_STD = 0.05
STRIPE_LENGTH = 0.6


def _ring(degrees: np.ndarray, schedule: Schedule, name: str) -> oracles.GaussianMixture:
    angles = np.deg2rad(degrees)
    means = RING_RADIUS * np.stack([np.cos(angles), np.sin(angles)], -1)
    return oracles.gaussian_mixture(means, RING_STD, schedule, name=name)


def _stripes(axis: int, schedule: Schedule, name: str) -> oracles.GaussianMixture:
    """3 Gaussians at ``STRIPE_OFFSETS`` along coordinate ``axis`` (0: x, vertical stripes),
    long along the other coordinate."""
    means = np.zeros((len(STRIPE_OFFSETS), 2))
    means[:, axis] = STRIPE_OFFSETS
    stds = np.full(2, STRIPE_LENGTH)
    stds[axis] = STRIPE_STD
    covs = np.broadcast_to(np.diag(stds**2), (len(STRIPE_OFFSETS), 2, 2))
    return oracles.gaussian_mixture(means, covs, schedule, name=name)


_DATASETS: dict[str, Callable[[Schedule], Density]] = {
    "ring": lambda s: _ring(np.arange(8) * 45.0, s, "ring"),
    "left_half_ring": lambda s: _ring(90.0 + np.arange(4) * 45.0, s, "left_half_ring"),
    "right_half_ring": lambda s: _ring(-90.0 + np.arange(4) * 45.0, s, "right_half_ring"),
    "bar": lambda s: oracles.box([-0.1, -1.0], [0.1, 1.0], s, name="bar"),
    "left_bar": lambda s: oracles.box([-0.3, -1.0], [-0.1, 1.0], s, name="left_bar"),
    "right_bar": lambda s: oracles.box([0.1, -1.0], [0.3, 1.0], s, name="right_bar"),
    "big_box": lambda s: oracles.box([-0.7, -0.7], [0.7, 0.7], s, name="big_box"),
    "small_box": lambda s: oracles.box([-0.3, -0.3], [0.3, 0.3], s, name="small_box"),
    "h_stripes": lambda s: _stripes(1, s, "h_stripes"),
    "v_stripes": lambda s: _stripes(0, s, "v_stripes"),
}


def names() -> list[str]:
    return sorted(_DATASETS)


def get(name: str, schedule: Schedule) -> Density:
    """The oracle of dataset ``name``; it has ``.sample(key, num)`` for exact level-0 data."""
    if name not in _DATASETS:
        raise ValueError(f"unknown 2D dataset {name!r}; known: {names()}")
    return _DATASETS[name](schedule)
