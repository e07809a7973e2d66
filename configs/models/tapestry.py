"""Image tapestries: ``scripts/tapestry.py --config=configs/models/tapestry.py:<v> --model=DIR``.

Sizes are in units of the model's image size (its resolution), so one config fits a model
of any size: ``canvas = (1, 2)`` is a canvas as tall as the model's images and twice as
wide, ``stride = 0.5`` starts a crop every half image (crops overlap by half). ``crops``
lists explicit ``(top, left)`` positions in the same units instead of the grid. There is
one prompt (:mod:`compdiff.prompts` syntax: ``AND``, ``NOT``, ``OR``, ``:weight``) and one
guidance scale per crop, in the order of the crops (row by row, left to right), and
optionally one weight per crop (``weights``; empty: all 1).

``sampler`` names an image sampler (:data:`compdiff.text2image.IMAGE_SAMPLERS`: RRR's
image settings as the CLEVR table runs them, one reverse step into each level, then one
kernel step); ``--sampler`` picks another. ``mala`` and ``hmc`` need an
energy-parameterized model.

Variants:

- ``demo``: three crops over a canvas twice as wide as the model's images, each prompted
  with one object of the ``captioned_scenes`` vocabulary on its own side of the crop
  (held-out colour pairs avoided), ULA, 4 canvases.
- ``tiny``: the same layout, 2 canvases; for tests.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("demo", "tiny")

def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "demo"
    if variant not in VARIANTS:
        raise ValueError(f"bad config variant {variant!r}: expected one of {list(VARIANTS)}")
    config = ml_collections.ConfigDict()
    config.canvas = (1.0, 2.0)
    config.stride = 0.5
    config.crops = ()
    config.prompts = ("a blue cube on the left", "a yellow sphere in the centre",
                      "a green cylinder on the right")
    config.scales = (3.0, 3.0, 3.0)
    config.weights = ()
    config.sampler = "ula"
    config.num = {"demo": 4, "tiny": 2}[variant]
    config.seed = 0
    return config
