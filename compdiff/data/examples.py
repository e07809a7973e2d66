"""Example functions: one dataset record -> one training example (see :mod:`.images`).

Each takes a record (a dict of numpy arrays from a tfds source) and a seeded
``np.random.Generator`` and returns float32 arrays:

- ``image_position`` (diffusion, RRR 5.2 / Composable Diffusion): the image and the
  image-plane centre of ONE of its objects, drawn uniformly, as the condition:
  ``{"x": [H*W*C], "cond": [2]}``. A model of ``p(image | one object at c)``
  composes with itself to place several objects.
- ``position_presence`` (the evaluation classifier, RRR 5.2): the image, a query
  position and whether an object is centred there: half the queries are an
  object's centre (label 1), half are positions at least ``NEGATIVE_RADIUS`` from
  every centre (label 0), half of those close to an object (hard negatives).
  ``{"x": [H*W*C], "cond": [2], "label": []}``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compdiff.data.images import Record, to_unit_range

# Image-plane distance (in [0, 1] units) beyond which no object is centred at a query.
NEGATIVE_RADIUS = 0.1


def image_position(record: Record, rng: np.random.Generator) -> dict[str, np.ndarray]:
    positions = np.asarray(record["positions"], np.float32).reshape(-1, 2)
    return {"x": to_unit_range(record["image"]),
            "cond": positions[rng.integers(len(positions))]}


def negative_position(centers: np.ndarray, rng: np.random.Generator,
                      radius: float = NEGATIVE_RADIUS) -> np.ndarray:
    """A position at least ``radius`` from every centre: near one (hard) or anywhere."""
    for _ in range(1000):
        if rng.random() < 0.5:
            angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(radius, 2 * radius)
            query = centers[rng.integers(len(centers))] + dist * np.array(
                [np.cos(angle), np.sin(angle)])
        else:
            query = rng.uniform(0.0, 1.0, 2)
        inside = np.all((query >= 0.0) & (query <= 1.0))
        if inside and np.min(np.linalg.norm(centers - query, axis=-1)) >= radius:
            return query.astype(np.float32)
    raise ValueError(f"no position {radius} away from every object centre in {centers.tolist()}")


def position_presence(record: Record, rng: np.random.Generator) -> dict[str, np.ndarray]:
    centers = np.asarray(record["positions"], np.float32).reshape(-1, 2)
    label = rng.random() < 0.5
    query = (centers[rng.integers(len(centers))] if label
             else negative_position(centers, rng))
    return {"x": to_unit_range(record["image"]), "cond": query.astype(np.float32),
            "label": np.float32(label)}


EXAMPLES: dict[str, Callable[[Record, np.random.Generator], dict[str, np.ndarray]]] = {
    "image_position": image_position,
    "position_presence": position_presence,
}


def get(name: str) -> Callable[[Record, np.random.Generator], dict[str, np.ndarray]]:
    if name not in EXAMPLES:
        raise ValueError(f"unknown example function {name!r}; known: {sorted(EXAMPLES)}")
    return EXAMPLES[name]
