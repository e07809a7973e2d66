"""RRR 5.4 at CPU scale: ``scripts/run.py --config=configs/experiments/text2image_table.py:<v>``.

Variants:

- ``tiny``: for tests, seconds: the ``tiny`` generator and judge (2 steps), 2 images per
  prompt, one prompt per composition type, reverse and HMC+SMC.
- ``quick``: the ``quick`` generator and a briefly trained judge (a smoke run of the
  pipeline in under 10 minutes, not a result): one prompt of four types, 4 images, reverse
  and HMC.
- ``cpu``: the ``cpu`` generator and judge, two single-concept prompts and one of every
  other type, 8 images each; reverse, ULA, U-HMC and HMC (RRR's settings), MALA adapted
  toward acceptance 0.6, and adapted MALA SMC (``configs/common.py``'s image rows).
- ``paper``: RRR's text-to-image settings (``configs/models/text2image.py:paper``, 64 px) for
  accelerators, more prompts and images.

The prompts ask for captions of :mod:`compdiff.data.captioned_scenes` pairs the generator's
training split holds, except ``held-out pair``, whose captions name the pairs it never saw.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.models import text2image, text2image_classifier

VARIANTS = ("tiny", "quick", "cpu", "paper")

# (name, prompts); the first prompt of each type is the one in the figures
COMPOSITIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("1 concept", ("a red sphere", "a blue cube", "a yellow cylinder", "a green cube")),
    ("2 AND", ("a red sphere AND a blue cube", "a yellow cylinder AND a green cube")),
    ("3 AND", ("a red sphere AND a blue cube AND a yellow cylinder",
               "a green cube AND a yellow sphere AND a red cylinder")),
    # the forbidden concept shares the colour or the shape of the asked one
    ("AND NOT", ("a red sphere AND NOT a red cylinder", "a blue cube AND NOT a yellow cube")),
    ("OR", ("a red sphere OR a blue cube", "a yellow cylinder OR a green cube")),
    ("held-out pair", ("a red cube", "a green sphere", "a blue cylinder")),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = common.variant(arg, VARIANTS, "text2image_table", "cpu")
    config = ml_collections.ConfigDict()
    config.experiment = "text2image_table"
    config.variant = variant
    config.seed = 0
    config.data_dir = text2image.DEFAULT_DATA_DIR
    config.scale = 3.0  # classifier-free weight of every phrase
    config.num_images = {"tiny": 2, "quick": 4, "cpu": 8, "paper": 256}[variant]
    config.num_judge_images = {"tiny": 48, "paper": 5000}.get(variant, 1000)
    # prompts per type (None: all of them): the single-concept type, then every other
    first, rest = {"tiny": (1, 1), "quick": (1, 1), "cpu": (2, 1)}.get(variant, (None, None))
    config.compositions = [ml_collections.ConfigDict(
        {"name": name, "prompts": list(prompts[:first if name == "1 concept" else rest])})
        for name, prompts in COMPOSITIONS
        if variant != "quick" or name in ("1 concept", "2 AND", "AND NOT", "OR")]
    # RRR's image settings (one reverse step into each level, then one kernel step of
    # a * beta_t), then the adapted rows of docs/smc.md: MALA adapted toward acceptance 0.6
    # after the reverse step at the same cost, and adapted MALA SMC (3 moves per level)
    labels = {"tiny": ("reverse", "hmc+smc"), "quick": ("reverse", "hmc"),
              "cpu": ("reverse", "ula", "uhmc", "hmc", "mala+adapt", "mala+adapt+smc")
              }.get(variant, tuple(r for r in common.IMAGE_ROWS if r != "reverse_equal"))
    config.samplers = common.image_rows(dict(step=0.035), dict(step=0.1), ["energy"],
                                        labels=labels)
    models = ml_collections.ConfigDict()
    models.generator = text2image.get_config(variant)
    models.judge = text2image_classifier.get_config(
        {"tiny": "tiny", "paper": "paper"}.get(variant, "cpu"))
    if variant in ("quick", "cpu"):  # 1500 steps reach 0.993; fewer fit the budgets
        models.judge.train.steps = {"quick": 200, "cpu": 1000}[variant]
    config.models = models
    return config
