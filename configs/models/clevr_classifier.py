"""The evaluation classifier of the CLEVR table (RRR 5.2): is an object centred at (u, v)?

``--config=configs/models/clevr_classifier.py:<tiny|cpu|paper>``: a binary classifier of
(image, query position), trained on rendered scenes with 1 to 5 objects: half the
queries are object centres, half are positions at least 0.1 from every centre
(:func:`compdiff.data.examples.position_presence`). A generated image counts as
correct when every requested position is classified present (confidence > 0.5).
"""

from __future__ import annotations

import ml_collections

from configs.models import clevr


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size, _ = clevr.parse_variant(arg)
    config = ml_collections.ConfigDict()
    config.task = "classifier"

    config.data = ml_collections.ConfigDict()
    config.data.source = "clevr_positions"
    config.data.builder_config = {"tiny": "tiny", "cpu": "16px", "paper": "64px"}[size]
    config.data.data_dir = clevr.DEFAULT_DATA_DIR
    config.data.example = "position_presence"

    config.model = ml_collections.ConfigDict()
    config.model.network = "classifier"
    config.model.parameterization = "eps"  # unused: a classifier has no parameterization
    config.model.query = "position"
    config.model.num_outputs = 1
    config.model.channels = {"tiny": 8, "cpu": 32, "paper": 64}[size]
    config.model.channel_mult = (1,) if size == "tiny" else (1, 2, 2)
    config.model.noise_conditional = False

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "linear"
    config.schedule.num_levels = 100

    config.train = ml_collections.ConfigDict()
    config.train.steps = {"tiny": 4, "cpu": 1500, "paper": 10_000}[size]
    config.train.batch_size = {"tiny": 8, "cpu": 128, "paper": 512}[size]
    config.train.lr = 1e-3
    config.train.ema_decay = {"tiny": 0.9, "cpu": 0.99, "paper": 0.999}[size]
    config.train.grad_clip = 10.0
    config.train.log_every = {"tiny": 2, "cpu": 100, "paper": 500}[size]
    config.train.checkpoint_every = {"tiny": 2, "cpu": 500, "paper": 2000}[size]
    config.train.keep_checkpoints = 2
    config.train.seed = 0
    return config
