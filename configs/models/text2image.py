"""Text-conditioned energy UNets on captioned scenes (RRR 5.4, issue 13).

``--config=configs/models/text2image.py:<tiny|quick|cpu|paper>[,param=<energy_dae|eps|...>]``

The condition is the caption's pooled text embedding (all-MiniLM-L6-v2, 384-d unit vectors,
:mod:`compdiff.text`): the UNet reads it like any condition vector (one embedding MLP added
to the time embedding), and condition dropout (10%) trains the learned null condition that
classifier-free prompt composition needs. A caption describes ONE object of the scene, so
``p(x | "a red cube")`` is "a red cube is somewhere in the image" and prompts compose:
``"a red cube AND a blue sphere"``. Caption embeddings are computed once per caption
(:func:`compdiff.data.examples.caption_embeddings`), and ``model.text_encoder`` records the
tower so that ``scripts/sample.py --prompt`` encodes prompts with the same one.

- ``tiny``: 16 px ``captioned_scenes/tiny``, a very small UNet, 2 steps; for tests.
- ``quick`` and ``cpu``: 32 px scenes of large objects only (``32px_large``: a small object
  is 3 pixels across at 32 px, its shape illegible to the judge), trained on ``train``
  (held-out shape x colour pairs absent); channels 16, 50 levels, 100 (``quick``) or 1,000
  (``cpu``) steps of 64, sized for the 10- and 60-minute budgets of
  ``configs/experiments/text2image_table.py`` on 2 cores (0.75 steps/s measured).
- ``paper``: RRR appendix G for accelerators: 64 px, channels 256, multipliers 1,2,3,4,
  3 residual blocks, cosine schedule with 1000 levels.
"""

from __future__ import annotations

import ml_collections

from compdiff.models.diffusion import PARAMETERIZATIONS
from configs import common

VARIANTS = ("tiny", "quick", "cpu", "paper")
DEFAULT_DATA_DIR = "~/compdiff_data"
TEXT_DIM = 384  # all-MiniLM-L6-v2's pooled embedding


def parse_variant(arg: str | None) -> tuple[str, str]:
    """``"cpu,param=eps"`` -> ``("cpu", "eps")``."""
    v = common.parse_variant(arg, words={"size": VARIANTS}, keys={"param": PARAMETERIZATIONS},
                             defaults={"size": None, "param": "energy_dae"}, required=("size",))
    return v["size"], v["param"]

def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, param = parse_variant(arg or "cpu")
    config = ml_collections.ConfigDict()
    config.task = "diffusion"

    config.data = ml_collections.ConfigDict()
    config.data.source = "captioned_scenes"
    config.data.builder_config = {"tiny": "tiny", "quick": "32px_large", "cpu": "32px_large",
                                  "paper": "64px"}[variant]
    config.data.data_dir = DEFAULT_DATA_DIR
    config.data.example = "image_text:encoder=minilm"

    config.model = ml_collections.ConfigDict()
    config.model.network = "unet"
    config.model.parameterization = param
    config.model.cond_dim = TEXT_DIM
    config.model.text_encoder = "minilm"
    # The network standardizes the embeddings by the training captions' mean and spread
    # (stored in the saved config): unit vectors sharing a large common part otherwise
    # learn too slowly to follow their caption within the CPU budgets (caption_gap.py).
    config.model.standardize_cond = True
    config.model.num_heads = 4
    config.model.remat = variant == "paper"
    config.model.position_map = 0.0
    (config.model.channels, config.model.channel_mult, config.model.num_res_blocks,
     config.model.attention_resolutions) = {
        "tiny": (8, (1,), 1, ()),  # one resolution: compiles in about half the time
        "quick": (16, (1, 2, 2), 1, (8,)),
        "cpu": (16, (1, 2, 2), 1, (8,)),
        "paper": (256, (1, 2, 3, 4), 3, (16, 8)),
    }[variant]

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "cosine"
    # 50 levels at CPU scale: sampling costs one network call per level and chain
    config.schedule.num_levels = {"tiny": 20, "paper": 1000}.get(variant, 50)

    config.train = ml_collections.ConfigDict()
    # quick and cpu fit the table's 10- and 60-minute budgets on 2 cores (0.75 steps/s)
    config.train.steps = {"tiny": 2, "quick": 100, "cpu": 1000, "paper": 1_000_000}[variant]
    config.train.batch_size = {"tiny": 8, "paper": 128}.get(variant, 64)
    config.train.lr = 1e-4 if variant == "paper" else 5e-4
    config.train.ema_decay = {"tiny": 0.9, "paper": 0.9999}.get(variant, 0.995)
    config.train.grad_clip = 10.0  # RRR
    config.train.cond_dropout = 0.1
    config.train.log_every = {"tiny": 1, "paper": 1000}.get(variant, 100)
    config.train.checkpoint_every = {"tiny": 2, "paper": 10_000}.get(variant, 500)
    config.train.sample_every = 0
    config.train.keep_checkpoints = 2
    config.train.seed = 0
    return config
