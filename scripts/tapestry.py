"""Samples image tapestries: a canvas larger than the model, one prompt per overlapping crop.

    python scripts/tapestry.py --config=configs/models/tapestry.py:demo --model=runs/captions \
        --out=out/tapestry [--sampler=uhmc]

``--model`` is the work directory of a text-conditioned image model
(``configs/models/text2image.py``; its prompts are encoded by the text tower it was trained
on, :mod:`compdiff.text`). Samplers use the image settings of
:data:`compdiff.text2image.IMAGE_SAMPLERS`. The config
(``configs/models/tapestry.py``) lays out the canvas and its crops (each of the model's
image size), gives every crop a prompt and a guidance scale, and picks the sampler.
The prompts' phrases are encoded once, each crop's prompt becomes a density over
crop-sized images (:func:`compdiff.prompts.compose_prompt`), their product over the
canvas (:mod:`compdiff.tapestry`) is sampled with the annealed sampler, and
``OUT/tapestry.png`` (the canvases) and ``OUT/tapestry.npz`` are written. Prints one
JSON line of what it did, with the noise images (:mod:`compdiff.evaluation.noise_images`)
among the crop windows and among the bands where two crops overlap.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from compdiff import cli, image_grids, prompts, samplers, text, text2image
from compdiff.data.images import to_uint8
from compdiff.evaluation import noise_images
from compdiff.models.diffusion import DiffusionModel
from compdiff.models.loading import build_model, load_params
from compdiff.tapestry import Crop, Tapestry, grid_crops, overlaps, tapestry

_CONFIG = config_flags.DEFINE_config_file("config", None, "Tapestry config file[:variant].",
                                          lock_config=True)
_MODEL = flags.DEFINE_string("model", None, "Work directory of the text-conditioned model.")
_OUT = flags.DEFINE_string("out", None, "Output directory (tapestry.png, tapestry.npz).")
_SAMPLER = flags.DEFINE_string("sampler", None, "An image sampler of compdiff.text2image "
                               "(default: the config's sampler).")
flags.mark_flags_as_required(["config", "model", "out"])

# phrases -> pooled text embeddings [n, cond_dim]
Encode = Callable[[list[str]], np.ndarray]


def _pixels(value: float, size: int, what: str) -> int:
    """``value`` model image sizes in pixels; it must land on a whole pixel."""
    pixels = value * size
    if abs(pixels - round(pixels)) > 1e-6:
        raise ValueError(f"{what} {value} of a {size}-pixel model image is {pixels:g} pixels, "
                         "not a whole number")
    return round(pixels)


def layout(config: ml_collections.ConfigDict, image_shape: Sequence[int]
           ) -> tuple[tuple[int, int, int], list[tuple[int, int]]]:
    """``(canvas (H, W, C), crop positions (top, left))`` in pixels for the model's images."""
    h, w, channels = image_shape
    canvas = (_pixels(config.canvas[0], h, "canvas height"),
              _pixels(config.canvas[1], w, "canvas width"), channels)
    if config.crops:
        positions = [(_pixels(top, h, "crop top"), _pixels(left, w, "crop left"))
                     for top, left in config.crops]
    else:
        stride = (_pixels(config.stride, h, "stride"), _pixels(config.stride, w, "stride"))
        positions = grid_crops(canvas, (h, w), stride)
    return canvas, positions


def text_encoder(model_config: ml_collections.ConfigDict, cond_dim: int) -> Encode:
    """The pooled embeddings of the tower the model was trained on (``model.text_encoder``)."""
    encoder = text.get(model_config.model.get("text_encoder", "minilm"))
    if encoder.dim != cond_dim:
        raise ValueError(f"the model reads conditions of length {cond_dim}, but its text "
                         f"tower's embeddings have {encoder.dim}")
    return lambda texts: np.asarray(encoder.encode(list(texts)).pooled)


def build(config: ml_collections.ConfigDict, model_dir: str, encode: Encode | None = None
          ) -> tuple[Tapestry, DiffusionModel]:
    """The tapestry of ``config`` over the model in ``model_dir``, and the model."""
    model_config, _, params = load_params(model_dir)
    model = build_model(model_config, params)
    image_shape = tuple(model_config.model.get("image_shape") or ())
    if len(image_shape) != 3 or not model.cond_dim:
        raise ValueError(f"{model_dir} holds no conditional image model (image_shape "
                         f"{image_shape or None}, cond_dim {model.cond_dim})")
    canvas, positions = layout(config, image_shape)
    count = len(positions)
    weights = list(config.weights) or [1.0] * count
    if not len(config.prompts) == len(config.scales) == len(weights) == count:
        raise ValueError(f"the config lays out {count} crops {positions} but gives "
                         f"{len(config.prompts)} prompts, {len(config.scales)} scales and "
                         f"{len(config.weights)} weights; give one per crop")
    # Every distinct phrase of every prompt through the text encoder in one call.
    trees = [prompts.parse_prompt(p) for p in config.prompts]
    texts = list(dict.fromkeys(t for tree in trees for t in prompts.phrases(tree)))
    encode = encode or text_encoder(model_config, model.cond_dim)
    table = dict(zip(texts, np.asarray(encode(texts), np.float32)))
    lookup = lambda phrases: np.stack([table[p] for p in phrases])
    crops = [Crop(top, left, prompts.compose_prompt(prompt, model, lookup, scale), weight)
             for (top, left), prompt, scale, weight
             in zip(positions, config.prompts, config.scales, weights)]
    return tapestry(canvas, image_shape[:2], crops), model


def run(config: ml_collections.ConfigDict, model_dir: str, out_dir: str,
        encode: Encode | None = None, sampler_name: str | None = None) -> dict:
    """Builds, samples and writes the tapestry; returns the record that :func:`main` prints.

    ``encode`` maps phrases to the model's condition vectors (default: MiniLM).
    """
    start = time.time()
    sampler_name = sampler_name or config.sampler
    sampler = text2image.image_sampler(sampler_name)
    target, model = build(config, model_dir, encode)
    schedule = model.schedule
    sample_start = time.time()
    x, stats = samplers.sample(target, sampler, schedule, jax.random.PRNGKey(config.seed),
                               config.num)
    x = np.asarray(x)
    sample_seconds = time.time() - sample_start
    os.makedirs(out_dir, exist_ok=True)
    png, npz = os.path.join(out_dir, "tapestry.png"), os.path.join(out_dir, "tapestry.npz")
    images = to_uint8(x, target.canvas_shape)
    image_grids.save_canvases(images, png)
    crops = [[c.top, c.left] for c in target.crops]
    np.savez(npz, x=x, images=images, crops=np.asarray(crops, np.int32),
             crop_shape=np.asarray(target.crop_shape), prompts=np.asarray(config.prompts),
             scales=np.asarray(config.scales, np.float32))
    batched = {i for b in target.batches for i in b.indices}
    # Noise images (compdiff.evaluation.noise_images) per crop window and per overlap band:
    # where two crops' densities meet, a sampler that fails leaves the band as noise.
    (h, w), windows = target.crop_shape, [(c.top, c.left) for c in target.crops]
    crop_noise = sum(noise_images.count(images[:, top:top + h, left:left + w])
                     for top, left in windows)
    bands = [b for b in overlaps(windows, (h, w)) if min(b[4:]) >= 2]  # 2x2: the detector
    band_noise = sum(noise_images.count(images[:, top:top + bh, left:left + bw])
                     for _, _, top, left, bh, bw in bands)
    return {
        "prompts": list(config.prompts), "scales": [float(s) for s in config.scales],
        "canvas_shape": list(target.canvas_shape), "crop_shape": list(target.crop_shape),
        "crops": crops, "crop_batches": [list(b.indices) for b in target.batches],
        "network_calls_per_evaluation": len(target.batches) + len(crops) - len(batched),
        "sampler": sampler_name, "num": int(config.num), "levels": schedule.num_levels,
        "nfe": int(stats.nfe), "diverged": int(stats.diverged),
        "finite": bool(np.all(np.isfinite(x))),
        "crop_noise": f"{crop_noise}/{len(windows) * len(images)}",
        "overlap_noise": f"{band_noise}/{len(bands) * len(images)}",
        "sample_seconds": round(sample_seconds, 2), "seconds": round(time.time() - start, 2),
        "png": png, "npz": npz,
    }


def main(argv: list[str]) -> None:
    cli.start(argv)
    print(json.dumps(run(_CONFIG.value, _MODEL.value, _OUT.value, sampler_name=_SAMPLER.value)))


if __name__ == "__main__":
    cli.run(main)
