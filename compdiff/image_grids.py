"""Image grids as PNG: samples of image models, with requested positions marked."""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np

from compdiff import samplers
from compdiff.data.pixels import to_uint8
from compdiff.models.diffusion import DiffusionModel
from compdiff.plots import pyplot


def save_grid(images: np.ndarray, path: str, marks: Sequence[np.ndarray] | None = None,
              titles: Sequence[str] | None = None, ncols: int = 8) -> str:
    """Writes uint8 ``images [N, H, W, C]`` as a grid to ``path``.

    ``marks[i]`` (``[k, 2]`` positions ``(u, v)`` in ``[0, 1]^2``) are drawn as
    red circles on image ``i``.
    """
    n = len(images)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    plt = pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.3 * nrows + 0.3),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        h, w = images[i].shape[:2]
        ax.imshow(images[i], interpolation="nearest", extent=(0, 1, 1, 0))
        if marks is not None and len(marks[i]):
            pts = np.asarray(marks[i]).reshape(-1, 2)
            ax.scatter(pts[:, 0], pts[:, 1], s=60, facecolors="none", edgecolors="red",
                       linewidths=1.0)
        if titles is not None:
            ax.set_title(titles[i], fontsize=6)
    fig.tight_layout(pad=0.2)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_model_grid(model: DiffusionModel, image_shape: tuple[int, int, int], path: str,
                    seed: int = 0, num: int = 16) -> str:
    """Reverse-diffusion samples of ``model``; a position-conditional model gets one random
    position per image, marked on the grid."""
    key_pos, key_sample = jax.random.split(jax.random.key(seed))
    target, marks = model, None
    if model.cond_dim == 2:
        positions = np.asarray(jax.random.uniform(key_pos, (num, 2), minval=0.15, maxval=0.85))
        target, marks = model.condition(positions), positions[:, None, :]
    x, _ = samplers.sample(target, samplers.get("reverse"), model.schedule, key_sample, num,
                           mesh=None)
    return save_grid(to_uint8(np.asarray(x), image_shape), path, marks)


def save_canvases(images: np.ndarray, path: str, min_width: int = 512) -> str:
    """uint8 canvases ``[N, H, W, C]`` (any aspect ratio) as one PNG, stacked top to bottom
    with white gaps and magnified (nearest pixel) to at least ``min_width`` pixels across.
    (:func:`save_grid` draws each image into a square cell, which would squash a wide one.)"""
    zoom = max(1, -(-min_width // images.shape[2]))
    big = images.repeat(zoom, axis=1).repeat(zoom, axis=2)
    if big.shape[-1] == 1:
        big = big.repeat(3, axis=-1)
    gap = np.full((zoom, *big.shape[2:]), 255, np.uint8)
    rows = [part for image in big for part in (image, gap)][:-1]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pyplot().imsave(path, np.concatenate(rows))
    return path
