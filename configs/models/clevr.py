"""Position-conditional UNet diffusion models on rendered CLEVR scenes (RRR 5.2).

``--config=configs/models/clevr.py:<size>[,param=<parameterization>]`` with ``size``:

- ``tiny``: 16 px scenes (the ``tiny`` builder config), a small UNet, a few steps;
  for tests (seconds).
- ``cpu``: 16 px scenes (the ``16px`` builder config), the model of the CPU table
  (``configs/experiments/clevr_table.py:cpu``), sized to train in minutes on 2 CPU cores:
  channels 16, T = 50 levels (sampling cost is proportional to T).
- ``paper``: RRR appendix G for TPU: 64 px, channels 128, multipliers 1,2,3,4,
  3 residual blocks, T = 100 linear, batch 1024, Adam 1e-4, 20k steps.

``param`` is ``eps`` or an energy form (default ``energy_dae``). The model is
``p(image | the image-plane centre of ONE of its objects)``, with the condition
dropped to the learned null condition 10% of the time (classifier-free
guidance). Datasets are built into ``data.data_dir`` on first use.
"""

from __future__ import annotations

import ml_collections

from compdiff.models.diffusion import PARAMETERIZATIONS
from configs import common

SIZES = ("tiny", "cpu", "paper")
DEFAULT_DATA_DIR = "~/compdiff_data"


def parse_variant(arg: str | None, sizes: tuple[str, ...] = SIZES,
                  default_param: str = "energy_dae") -> tuple[str, str]:
    """``"cpu,param=eps"`` -> ``("cpu", "eps")``."""
    v = common.parse_variant(arg, words={"size": sizes}, keys={"param": PARAMETERIZATIONS},
                             defaults={"size": "cpu", "param": default_param})
    return v["size"], v["param"]

def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size, param = parse_variant(arg)
    config = ml_collections.ConfigDict()
    config.task = "diffusion"

    config.data = ml_collections.ConfigDict()
    config.data.source = "clevr_positions"
    config.data.builder_config = {"tiny": "tiny", "cpu": "16px", "paper": "64px"}[size]
    config.data.data_dir = DEFAULT_DATA_DIR
    config.data.example = "image_position"

    config.model = ml_collections.ConfigDict()
    config.model.network = "unet"
    config.model.parameterization = param
    config.model.cond_dim = 2
    config.model.num_heads = 4
    config.model.remat = False
    # The position is also an input channel (a bump of this width); 0: embedding only (RRR).
    config.model.position_map = 0.0 if size == "paper" else 0.05
    if size == "paper":
        config.model.channels = 128
        config.model.channel_mult = (1, 2, 3, 4)
        config.model.num_res_blocks = 3
        config.model.attention_resolutions = (16, 8)
    elif size == "cpu":
        config.model.channels = 16
        config.model.channel_mult = (1, 2, 2)
        config.model.num_res_blocks = 1
        config.model.attention_resolutions = (4,)
    else:  # one resolution, no attention: compiles in half the time of (1, 2) with attention
        config.model.channels = 8
        config.model.channel_mult = (1,)
        config.model.num_res_blocks = 1
        config.model.attention_resolutions = ()

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "linear"
    config.schedule.num_levels = {"tiny": 20, "cpu": 50, "paper": 100}[size]

    config.train = ml_collections.ConfigDict()
    config.train.steps = {"tiny": 4, "cpu": 2500, "paper": 20_000}[size]
    config.train.batch_size = {"tiny": 8, "cpu": 64, "paper": 1024}[size]
    config.train.lr = {"tiny": 1e-3, "cpu": 5e-4, "paper": 1e-4}[size]
    config.train.ema_decay = {"tiny": 0.9, "cpu": 0.995, "paper": 0.9999}[size]
    config.train.grad_clip = 10.0  # RRR
    config.train.cond_dropout = 0.1
    config.train.log_every = {"tiny": 2, "cpu": 100, "paper": 500}[size]
    config.train.checkpoint_every = {"tiny": 2, "cpu": 500, "paper": 2000}[size]
    config.train.sample_every = {"tiny": 0, "cpu": 1000, "paper": 5000}[size]
    config.train.keep_checkpoints = 2
    config.train.seed = 0
    return config
