"""Figures like RRR Figure 2: component densities, the exact composition, samples.

A figure is a grid of panels, one row per model kind. A panel is either a
density (an :class:`~compdiff.exact.GridTarget`, drawn as its cell
probabilities) or a sample cloud (an ``[n, 2]`` array, drawn as a scatter),
all over the same square window so they compare by eye. Non-finite samples
are dropped from the scatter and counted in the title.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from compdiff.exact import GridTarget


def pyplot():
    """``matplotlib.pyplot`` on the file-only ``Agg`` backend (never needs a display).

    Imported on first use, not with this module: matplotlib costs about half a second at
    import, which every command-line start would pay before doing anything."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


Panel = tuple[str, GridTarget | np.ndarray | None]  # (title, content); None: title only


def _draw_density(ax, target: GridTarget, extent: float) -> None:
    mass = np.exp(np.asarray(target.log_mass, np.float64))  # [nx, ny], x along axis 0
    n = mass.shape[0]
    lo_x, lo_y = target.lows
    hi_x, hi_y = lo_x + n * target.cell[0], lo_y + n * target.cell[1]
    # Square root of the mass keeps faint modes visible next to sharp ones.
    ax.imshow(np.sqrt(mass).T, origin="lower", extent=(lo_x, hi_x, lo_y, hi_y), cmap="magma",
              interpolation="nearest")
    ax.set_facecolor(pyplot().get_cmap("magma")(0.0))


def _draw_samples(ax, x: np.ndarray) -> int:
    x = np.asarray(x, np.float64)
    finite = np.all(np.isfinite(x), axis=-1)
    ax.scatter(x[finite, 0], x[finite, 1], s=1.0, alpha=0.4, color="tab:blue", linewidths=0)
    return int(np.sum(~finite))


def figure(path: str, rows: Sequence[tuple[str, Sequence[Panel]]], *, extent: float = 1.5,
           panel_size: float = 2.2) -> str:
    """Writes a PNG of ``rows`` ``[(row_label, [(title, density | samples | None), ...])]``.

    Every panel shows ``[-extent, extent]^2``. Returns ``path``.
    """
    if not rows:
        raise ValueError("a figure needs at least one row")
    num_cols = max(len(panels) for _, panels in rows)
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), num_cols, squeeze=False,
                             figsize=(panel_size * num_cols, panel_size * len(rows) + 0.3))
    for (label, panels), row_axes in zip(rows, axes):
        for col, ax in enumerate(row_axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(panels):
                ax.axis("off")
                continue
            title, content = panels[col]
            if content is None:  # a cell with nothing to show: keep its title and row label
                ax.set_frame_on(False)
                ax.set_title(title, fontsize=8, color="gray")
                continue
            if isinstance(content, GridTarget):
                _draw_density(ax, content, extent)
            else:
                dropped = _draw_samples(ax, content)
                if dropped:
                    title += f" ({dropped} non-finite)"
            ax.set_xlim(-extent, extent)
            ax.set_ylim(-extent, extent)
            ax.set_aspect("equal")
            ax.set_title(title, fontsize=8)
        row_axes[0].set_ylabel(label, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scatter(path: str, x: np.ndarray, title: str = "", *, extent: float = 1.5,
            target: GridTarget | None = None) -> str:
    """A single sample cloud, beside the exact density when ``target`` is given."""
    panels: list[Panel] = [(title or "samples", np.asarray(x))]
    if target is not None:
        panels.insert(0, ("exact", target))
    return figure(path, [("", panels)], extent=extent, panel_size=3.5)
