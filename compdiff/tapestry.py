"""Image tapestries: a canvas larger than the model, as a product of densities over its crops.

RRR (section 5.4) composes one picture bigger than the model's resolution out of
overlapping crops, each with its own prompt. A tapestry is a canvas ``x`` of shape
``(H, W, C)`` (flat, ``[B, H*W*C]``, as every image density of the project) and
crops ``i = 1..K``: a window ``P_i x`` of shape ``(h, w, C)`` at ``(top_i, left_i)``,
a density ``p_i`` over crop-sized images (a composed prompt: any
:class:`~compdiff.compose.Density` of dimension ``h*w*C``) and a weight ``w_i > 0``.
The canvas density at level ``t`` is their product::

    log pi_t(x) = sum_i w_i log p_{i,t}(P_i x)
    grad_x log pi_t(x) = sum_i w_i P_i^T score_{i,t}(P_i x)

``P_i^T`` puts a crop-sized score back at its window and zeros elsewhere, so a
pixel covered by several crops receives every covering crop's term (they add;
none overwrites another), and a pixel covered by none would have no density
at all, which :func:`tapestry` refuses. Sampling runs the project's annealed
samplers on the canvas itself (ULA / U-HMC always, MALA / HMC when every crop
has a log-density); the canvas is one state, so overlapping crops share its
noise and its moves automatically, and a Metropolis test accepts or rejects a
move of the whole canvas.

Overlaps. A pixel in ``k`` crops feels ``k`` scores: where the crops agree the
canvas is sharper there than any one crop (at the noisiest level nearly
``N(0, I / k)`` rather than ``N(0, I)``), as a product of ``k`` prompts is.
Reverse-diffusion steps, which assume a diffused density, over-correct such
pixels (badly so with few levels); the MCMC steps target ``pi_t`` itself. The
weights temper the terms (``w = 1/k`` on a uniform ``k``-fold cover is the
geometric mean there, at the price of flattening pixels that fewer crops cover).

As for every composition here, ``pi_t`` is the product of the crops' level-``t``
densities, not the diffusion of the level-0 product, so reverse diffusion alone
is biased and the MCMC kernels correct it (RRR's argument for annealed MCMC).
MultiDiffusion-style samplers average the crops' noise predictions per pixel
instead; a per-pixel average is not the gradient of any density, so it has no
Metropolis correction and no log-density. The weighted sum is the score of the
product above.

Why written here: no library at hand composes crops as densities. diffusers'
panorama pipeline (MultiDiffusion) averages per pixel inside its own PyTorch
sampler, and nothing else plugs into this project's Density algebra and samplers.

Cost. Crop densities with one layout (same tree of densities and static
settings, leaves of equal shapes; their ``name`` labels may differ), e.g. one
prompt template under different embeddings, are stacked and evaluated as ONE
``jax.vmap``-ed call over the crops instead of a Python loop of ``K`` calls
(:class:`CropBatch`). Leaves that are one object in all of them (the network's
parameters, the schedule) are not stacked: the vmapped call reads them once,
and a conditioned network runs as one batched forward of ``K`` crops times
its conditions. Which crops batch and which leaves are shared is decided when
the tapestry is built, by identity, and stored as static structure (as
:mod:`compdiff.compose` does for shared networks): inside ``jit`` every leaf
is a distinct tracer. Crops that match no other are evaluated on their own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from compdiff.compose import BOTH, LOG_PROB, SCORE, Density

Array = jnp.ndarray
# Static dataclass fields that only label a density (for describe()); crops whose densities
# differ in them alone still batch. Every other static field must agree.
_LABEL_FIELDS = ("name", "label")


@flax.struct.dataclass
class Crop:
    """A window of the canvas at ``(top, left)`` with ``density`` over its flat ``h*w*C``
    pixels, entering the canvas density as ``density ** weight``."""

    top: int = flax.struct.field(pytree_node=False)
    left: int = flax.struct.field(pytree_node=False)
    density: Density
    weight: float | Array = 1.0


@dataclasses.dataclass(frozen=True)
class CropBatch:
    """Crops evaluated as one vmapped call: ``indices`` into the tapestry's crops, and for
    each leaf of their densities (``jax.tree_util.tree_leaves`` order) whether it is one
    object shared by all of them (read once) rather than stacked on the crop axis."""

    indices: tuple[int, ...]
    shared: tuple[bool, ...]


@flax.struct.dataclass
class Tapestry(Density):
    """``log pi_t(x) = sum_i w_i log p_{i,t}(crop_i(x))`` over flat canvases ``[B, H*W*C]``.

    Build with :func:`tapestry`, which validates the crops and finds the
    ``batches``; ``batches=()`` evaluates every crop on its own.
    """

    crops: tuple[Crop, ...]
    canvas_shape: tuple[int, int, int] = flax.struct.field(pytree_node=False, default=(0, 0, 0))
    crop_shape: tuple[int, int] = flax.struct.field(pytree_node=False, default=(0, 0))
    dim: int = flax.struct.field(pytree_node=False, default=0)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=False)
    batches: tuple[CropBatch, ...] = flax.struct.field(pytree_node=False, default=())

    def log_prob(self, x: Array, t: Array) -> Array:
        self.require_log_prob("Tapestry.log_prob")
        return self._evaluate(x, t, LOG_PROB)

    def score(self, x: Array, t: Array) -> Array:
        return self._evaluate(x, t, SCORE)

    def log_prob_and_score(self, x: Array, t: Array) -> tuple[Array, Array]:
        self.require_log_prob("Tapestry.log_prob_and_score")
        return self._evaluate(x, t, BOTH)

    def crop_pixels(self, x: Array) -> list[Array]:
        """Every crop's window of the canvases ``x [B, H*W*C]``, flat: ``[B, h*w*C]`` each."""
        (height, width, channels), (h, w) = self.canvas_shape, self.crop_shape
        canvas = x.reshape(x.shape[0], height, width, channels)
        return [canvas[:, c.top:c.top + h, c.left:c.left + w, :].reshape(x.shape[0], -1)
                for c in self.crops]

    def _evaluate(self, x: Array, t: Array, what: str) -> Any:
        windows = self.crop_pixels(x)
        parts: list = [None] * len(self.crops)
        for batch in self.batches:
            stacked = self._evaluate_batch(batch, windows, t, what)
            for j, i in enumerate(batch.indices):
                parts[i] = jax.tree_util.tree_map(lambda a, j=j: a[j], stacked)
        parts = [getattr(c.density, what)(window, t) if part is None else part
                 for c, window, part in zip(self.crops, windows, parts)]
        weights = [c.weight for c in self.crops]
        if what == LOG_PROB:
            return sum(w * lp for w, lp in zip(weights, parts))
        score = self._scatter_add(x, [w * (s if what == SCORE else s[1])
                                      for w, s in zip(weights, parts)])
        if what == SCORE:
            return score
        return sum(w * lp for w, (lp, _) in zip(weights, parts)), score

    def _scatter_add(self, x: Array, crop_scores: list[Array]) -> Array:
        """``sum_i P_i^T s_i``: each crop's score added at its window (overlaps add up)."""
        (height, width, channels), (h, w) = self.canvas_shape, self.crop_shape
        batch = x.shape[0]
        total = jnp.zeros((batch, height, width, channels), x.dtype)
        for crop, s in zip(self.crops, crop_scores):
            window = s.reshape(batch, h, w, channels)
            total = total.at[:, crop.top:crop.top + h, crop.left:crop.left + w, :].add(window)
        return total.reshape(batch, -1)

    def _evaluate_batch(self, batch: CropBatch, windows: list[Array], t: Array,
                        what: str) -> Any:
        """The crops of ``batch`` as one ``jax.vmap`` over their stacked densities; outputs
        carry the crop axis first (``[k, B]``, ``[k, B, h*w*C]``)."""
        members = [self.crops[i].density for i in batch.indices]
        treedef = jax.tree_util.tree_structure(members[0])
        columns = list(zip(*(jax.tree_util.tree_leaves(m) for m in members)))
        if len(columns) != len(batch.shared):
            raise ValueError("the tapestry's crop batches no longer match its crops (were the "
                             "crops replaced?); rebuild it with tapestry()")
        varying = [jnp.stack(column) for column, shared in zip(columns, batch.shared)
                   if not shared]

        def one_crop(varying_leaves: list[Array], window: Array) -> Any:
            rest = iter(varying_leaves)
            leaves = [column[0] if shared else next(rest)
                      for column, shared in zip(columns, batch.shared)]
            return getattr(jax.tree_util.tree_unflatten(treedef, leaves), what)(window, t)

        return jax.vmap(one_crop)(varying, jnp.stack([windows[i] for i in batch.indices]))

    def score_only_leaves(self) -> list[str]:
        return [name for c in self.crops for name in c.density.score_only_leaves()]

    def describe(self) -> str:
        (height, width, channels), (h, w) = self.canvas_shape, self.crop_shape
        terms = [f"[{c.top}:{c.top + h}, {c.left}:{c.left + w}] "
                 f"{c.density.describe()}^{float(c.weight):g}" for c in self.crops]
        return f"tapestry {height}x{width}x{channels}(" + " * ".join(terms) + ")"


def tapestry(canvas_shape: Sequence[int], crop_shape: Sequence[int], crops: Sequence[Crop],
             batch: bool = True) -> Tapestry:
    """The product of ``crops`` over a canvas of shape ``(H, W, C)`` (crops ``(h, w)``).

    Raises ``ValueError`` (one line) for a crop outside the canvas, a crop
    density whose ``dim`` is not ``h*w*C``, a weight that is not a positive
    finite number, canvas pixels that no crop covers (they would have no
    density; the message names them), and no crops; ``TypeError`` for
    something that is not a :class:`Crop` of a :class:`Density`. ``batch=False``
    evaluates every crop on its own (a Python loop over the crops).
    """
    canvas_shape = _positive_ints(canvas_shape, 3, "canvas_shape (H, W, C)")
    crop_shape = _positive_ints(crop_shape, 2, "crop_shape (h, w)")
    (height, width, channels), (h, w) = canvas_shape, crop_shape
    if h > height or w > width:
        raise ValueError(f"crop_shape {h}x{w} is larger than the {height}x{width} canvas")
    crops = tuple(crops)
    if not crops:
        raise ValueError("a tapestry needs at least one crop")
    covered = np.zeros((height, width), bool)
    for i, crop in enumerate(crops):
        if not isinstance(crop, Crop) or not isinstance(crop.density, Density):
            raise TypeError(f"crop {i} must be a Crop(top, left, density, weight) of a "
                            f"compdiff Density, got {type(crop).__name__}"
                            + (f" of {type(crop.density).__name__}"
                               if isinstance(crop, Crop) else ""))
        _check_crop(i, crop, canvas_shape, crop_shape)
        covered[crop.top:crop.top + h, crop.left:crop.left + w] = True
    if not covered.all():
        rows, cols = np.nonzero(~covered)
        raise ValueError(
            f"canvas pixels covered by no crop would have no density: {rows.size} in rows "
            f"{rows.min()}..{rows.max()}, columns {cols.min()}..{cols.max()} of the "
            f"{height}x{width} canvas; add or move crops to cover them")
    crops = tuple(c.replace(weight=jnp.asarray(c.weight, jnp.float32)) for c in crops)
    return Tapestry(crops=crops, canvas_shape=canvas_shape, crop_shape=crop_shape,
                    dim=height * width * channels,
                    has_log_prob=all(c.density.has_log_prob for c in crops),
                    batches=crop_batches([c.density for c in crops]) if batch else ())


def grid_crops(canvas_shape: Sequence[int], crop_shape: Sequence[int],
               stride: int | Sequence[int]) -> list[tuple[int, int]]:
    """Positions ``(top, left)`` of crops covering the canvas, row by row, left to right.

    Along each axis the crops start every ``stride`` pixels (one int, or
    ``(rows, columns)``) and the last one is moved to end at the canvas edge, so
    the canvas is covered whatever its size; ``stride < crop`` makes them overlap.
    ``canvas_shape`` is ``(H, W)`` or ``(H, W, C)``.
    """
    if len(canvas_shape) not in (2, 3):
        raise ValueError(f"canvas_shape must be (H, W) or (H, W, C), got {tuple(canvas_shape)}")
    size = _positive_ints(canvas_shape[:2], 2, "canvas_shape (H, W)")
    crop = _positive_ints(crop_shape, 2, "crop_shape (h, w)")
    strides = _positive_ints([stride] * 2 if isinstance(stride, int | np.integer) else stride,
                             2, "stride")
    starts = []
    for axis, (length, window, step) in enumerate(zip(size, crop, strides)):
        name = ("rows", "columns")[axis]
        if window > length:
            raise ValueError(f"crop_shape {crop[0]}x{crop[1]} does not fit the {size[0]}x"
                             f"{size[1]} canvas ({name})")
        if step > window:
            raise ValueError(f"stride {step} along {name} is larger than the crop ({window}): "
                             "the crops would leave gaps")
        axis_starts = list(range(0, length - window + 1, step))
        if axis_starts[-1] != length - window:
            axis_starts.append(length - window)
        starts.append(axis_starts)
    return [(top, left) for top in starts[0] for left in starts[1]]


def overlaps(positions: Sequence[tuple[int, int]], crop_shape: Sequence[int]
             ) -> list[tuple[int, int, int, int, int, int]]:
    """The shared region of every pair of overlapping crops at ``positions``, as
    ``(i, j, top, left, height, width)`` with ``i < j``: where two crop densities meet, the
    band a tapestry must fill with one image that both crops accept."""
    h, w = crop_shape[:2]
    out = []
    for i, (ti, li) in enumerate(positions):
        for j in range(i + 1, len(positions)):
            tj, lj = positions[j]
            top, left = max(ti, tj), max(li, lj)
            height, width = min(ti, tj) + h - top, min(li, lj) + w - left
            if height > 0 and width > 0:
                out.append((i, j, top, left, height, width))
    return out


def crop_batches(densities: Sequence[Density]) -> tuple[CropBatch, ...]:
    """Groups of two or more ``densities`` with one layout (see the module docstring)."""
    buckets: list[tuple[Hashable, list[int]]] = []
    for i, density in enumerate(densities):
        layout = _layout(density)
        for key, members in buckets:
            if _equal(key, layout):
                members.append(i)
                break
        else:
            buckets.append((layout, [i]))
    batches = []
    for _, members in buckets:
        if len(members) < 2:
            continue
        columns = zip(*(jax.tree_util.tree_leaves(densities[i]) for i in members))
        batches.append(CropBatch(indices=tuple(members), shared=tuple(
            all(leaf is column[0] for leaf in column) for column in columns)))
    return tuple(batches)


def _layout(node: Any) -> Any:
    """What must agree for densities to be stacked and evaluated with the first one's static
    structure: dataclass types, static fields (labels aside), leaf shapes and dtypes."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        fields = []
        for field in dataclasses.fields(node):
            value = getattr(node, field.name)
            if field.metadata.get("pytree_node", True):
                fields.append((field.name, _layout(value)))
            elif field.name not in _LABEL_FIELDS:
                fields.append((field.name, value))
        return type(node), tuple(fields)
    if isinstance(node, tuple | list):
        return type(node), tuple(_layout(v) for v in node)
    if isinstance(node, dict):
        return type(node), tuple((k, _layout(node[k])) for k in sorted(node, key=repr))
    leaves, treedef = jax.tree_util.tree_flatten(node)
    return treedef, tuple((np.shape(leaf), jnp.result_type(leaf)) for leaf in leaves)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # a static field that does not compare (an array): not stackable
        return False


def _positive_ints(values: Sequence[int], length: int, what: str) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != length or not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0
            for v in values):
        raise ValueError(f"{what} must be {length} positive integers, got {values}")
    return tuple(int(v) for v in values)


def _check_crop(i: int, crop: Crop, canvas_shape: tuple[int, int, int],
                crop_shape: tuple[int, int]) -> None:
    (height, width, channels), (h, w) = canvas_shape, crop_shape
    for name, value in (("top", crop.top), ("left", crop.left)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise ValueError(f"crop {i}: {name} must be an integer pixel index, got {value!r}")
    if crop.top < 0 or crop.left < 0 or crop.top + h > height or crop.left + w > width:
        raise ValueError(
            f"crop {i} at (top={crop.top}, left={crop.left}) covers rows {crop.top}.."
            f"{crop.top + h - 1}, columns {crop.left}..{crop.left + w - 1}, outside the "
            f"{height}x{width} canvas (rows 0..{height - 1}, columns 0..{width - 1})")
    if crop.density.dim != h * w * channels:
        raise ValueError(
            f"crop {i}: its density {crop.density.describe()} has dim {crop.density.dim}, but "
            f"a {h}x{w}x{channels} crop has {h * w * channels} pixels")
    if isinstance(crop.weight, jax.core.Tracer):  # built inside jit: checked by the caller
        return
    try:
        weight = float(crop.weight) if np.ndim(crop.weight) == 0 else math.nan
    except (TypeError, ValueError):
        weight = math.nan
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"crop {i}: weight must be a positive finite number, got {crop.weight!r}"
                         " (a pixel with no positive term would have no proper density)")
