"""UNet diffusion models for classifier(-free) guidance (RRR 5.3, issue 12).

``--config=configs/models/guidance_models.py:<dataset>[,param=<eps|energy_dae|...>][,conditional=True]``

- ``digits``: scikit-learn digit scans at 16 px, 1 channel (:mod:`compdiff.data.digits`).
- ``scenes``: single rendered objects at 32 px, trained on the ``32px`` split that holds
  out 3 shape x colour pairs (:mod:`compdiff.data.scene_classes`).
- ``imagenet``: ``imagenet_resized/64x64`` for TPU (:mod:`compdiff.data.imagenet`).
- ``paper``: RRR appendix G on ImageNet for TPU: 128 px (``imagenet2012`` resized and
  centre-cropped), channels 128, multipliers 1,1,2,3,4, 2 residual blocks, attention at
  16 px (Ho et al. 2020, whose architecture RRR follows), 1000 linear levels, batch 64,
  Adam 1e-4, 1M iterations.
- ``tiny``: digits at 16 px with a very small UNet and 2 steps; for tests.

``param`` is the parameterization (default ``energy_dae``; ``eps`` for the score-only
baseline). By default the model is unconditional, ``p(x)``, to be guided by a
noise-conditional classifier (``configs/models/classifier.py:<dataset>,noisy=True``, which uses
the same :data:`NUM_LEVELS`). ``conditional=True``: a class-conditional model
``p(x | y)`` on a one-hot class (``image_class`` examples), with the class dropped to the
learned null condition 10% of the time, for the classifier-free comparison at the same
size. Datasets are built into ``data.data_dir`` on first use.
"""

from __future__ import annotations

import ml_collections

from compdiff.models.diffusion import PARAMETERIZATIONS
from configs import common

DATASETS = ("digits", "scenes", "imagenet", "paper", "tiny")
DEFAULT_DATA_DIR = "~/compdiff_data"
# Levels of each model's schedule; its guidance classifiers are trained on the same ones.
NUM_LEVELS = {"tiny": 20, "digits": 100, "scenes": 100, "imagenet": 1000, "paper": 1000}
NUM_CLASSES = {"tiny": 10, "digits": 10, "scenes": 12, "imagenet": 1000, "paper": 1000}


def parse_variant(arg: str | None) -> tuple[str, str, bool]:
    """``"digits,param=eps,conditional=True"`` -> ``("digits", "eps", True)``."""
    v = common.parse_variant(arg, words={"dataset": DATASETS},
                             keys={"param": PARAMETERIZATIONS, "conditional": (True, False)},
                             defaults={"dataset": None, "param": "energy_dae",
                                       "conditional": False}, required=("dataset",))
    return v["dataset"], v["param"], v["conditional"]

def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name, param, conditional = parse_variant(arg)
    config = ml_collections.ConfigDict()
    config.task = "diffusion"

    config.data = ml_collections.ConfigDict()
    config.data.source = {"tiny": "digits", "scenes": "scene_classes",
                          "paper": "imagenet"}.get(name, name)
    config.data.builder_config = {"tiny": "16px", "digits": "16px", "scenes": "32px",
                                  "imagenet": "resized64", "paper": "2012_128"}[name]
    config.data.data_dir = DEFAULT_DATA_DIR
    num_classes = NUM_CLASSES[name]
    config.data.example = (f"image_class:num_classes={num_classes}" if conditional
                           else "class_label")  # the label is read, and unused, unconditionally

    config.model = ml_collections.ConfigDict()
    config.model.network = "unet"
    config.model.parameterization = param
    config.model.cond_dim = num_classes if conditional else 0
    config.model.num_heads = 4
    config.model.remat = name in ("imagenet", "paper")
    config.model.position_map = 0.0
    arch = {  # channels, multipliers, residual blocks, attention resolutions
        "tiny": (8, (1,), 1, ()),  # one resolution: compiles in half the time
        "digits": (32, (1, 2, 2), 1, (4,)),
        "scenes": (32, (1, 2, 2), 1, (8,)),
        "imagenet": (128, (1, 2, 3, 4), 2, (16, 8)),
        "paper": (128, (1, 1, 2, 3, 4), 2, (16,)),
    }[name]
    (config.model.channels, config.model.channel_mult, config.model.num_res_blocks,
     config.model.attention_resolutions) = arch

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "linear"
    config.schedule.num_levels = NUM_LEVELS[name]

    config.train = ml_collections.ConfigDict()
    config.train.steps = {"tiny": 2, "digits": 4000, "scenes": 4000, "imagenet": 500_000,
                          "paper": 1_000_000}[name]
    config.train.batch_size = {"tiny": 8, "digits": 64, "scenes": 64, "imagenet": 256,
                               "paper": 64}[name]
    config.train.lr = {"tiny": 1e-3, "digits": 5e-4, "scenes": 5e-4, "imagenet": 1e-4,
                       "paper": 1e-4}[name]
    config.train.ema_decay = {"tiny": 0.9, "digits": 0.995, "scenes": 0.995,
                              "imagenet": 0.9999, "paper": 0.9999}[name]
    config.train.grad_clip = 10.0  # RRR
    config.train.cond_dropout = 0.1 if conditional else 0.0
    config.train.log_every = {"tiny": 1, "digits": 100, "scenes": 100}.get(name, 1000)
    config.train.checkpoint_every = {"tiny": 2, "digits": 500, "scenes": 500}.get(name, 10_000)
    config.train.sample_every = 0
    config.train.keep_checkpoints = 2
    config.train.seed = 0
    return config
