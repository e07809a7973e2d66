"""Pixels <-> model range: uint8 images and the flat ``[-1, 1]`` vectors the models see.

Images are flat vectors ``[..., H*W*C]`` everywhere outside the networks (the samplers,
compositions and diagnostics work on ``[B, d]`` arrays), with the uint8 range ``0..255``
mapped affinely onto ``[-1, 1]``: ``x = v / 127.5 - 1``.
"""

from __future__ import annotations

import numpy as np


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> float32 ``[H*W*C]`` in ``[-1, 1]``."""
    return (np.asarray(image, np.float32).reshape(-1) / 127.5) - 1.0


def to_uint8(x: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Flat ``[..., H*W*C]`` in ``[-1, 1]`` -> uint8 ``[..., H, W, C]`` (clipped)."""
    x = np.clip((np.asarray(x, np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return x.reshape(x.shape[:-1] + tuple(image_shape))
