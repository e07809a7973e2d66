"""Du & Kaelbling (2024) Fig. 14: discovering components without labels. ``tiny``,
``quick``, ``paper``.

    python scripts/run.py --config=configs/experiments/discovery.py:quick \
        --workdir=runs/discovery

- ``classes``: the digits whose scans form the unlabelled data (8x8, flattened to 64
  values in [-1, 1]); ``max_per_class`` > 0 keeps the first that many of each.
- ``num_components``: K, the number of diffusion components.
- ``rounds`` EM rounds of ``steps_per_round`` training steps each (warm-started).
- ``estep``: the ELBO estimate of ``-log p_k`` (``num_levels`` levels, ``draws`` noise
  draws per level, ``weighting`` ``elbo`` or ``uniform``, from ``min_level``; ``cross_fit``:
  score each example with networks trained on the other half of the data); ``temperature`` on the
  responsibilities. ``init``: ``kmeans++``, ``kmeans`` (fitted k-means centres) or
  ``random`` (``init_temperature``: the softness of the distance-based start).
- ``train``: ``configs/models/toy2d.py`` with an energy parameterization (the composed
  sample set is a mixture, which needs log-densities).

Cost (2-core CPU, shared with other jobs): ``quick`` (3 classes, 3 seeds, 6 rounds of 300
steps, 2 x 128 networks) measured at 2 min 50 s (``docs/discovery.md``), ~6 s per round per
seed. ``paper`` (5 classes, 5 seeds, 12 rounds of 500 steps, 4 x 256 networks) is
estimated from that by scaling the steps (x1.7), K (x1.7) and the network (~x4): ~50 s per
round, ~50 minutes for its 60 rounds; not run here.
"""

from __future__ import annotations

import ml_collections

from configs.common import variant
from configs.models import toy2d

VARIANTS = ("tiny", "quick", "paper")


def get_config(arg: str | None = "quick") -> ml_collections.ConfigDict:
    name = variant(arg, VARIANTS, "discovery", "quick")
    tiny, paper = name == "tiny", name == "paper"
    config = ml_collections.ConfigDict()
    config.experiment = "discovery"
    config.variant = name
    config.seed = 0

    config.classes = (0, 1) if tiny else ((0, 1, 2, 3, 4) if paper else (1, 4, 7))
    config.max_per_class = 30 if tiny else 0
    config.num_components = len(config.classes)
    config.seeds = (0,) if tiny else ((0, 1, 2, 3, 4) if paper else (0, 1, 2))
    config.rounds = 2 if tiny else (12 if paper else 6)
    config.steps_per_round = 20 if tiny else (500 if paper else 300)
    config.temperature = 1.0
    config.init = "kmeans++"
    config.init_temperature = 0.1
    config.estep = ml_collections.ConfigDict(dict(
        num_levels=4 if tiny else 10, draws=1 if tiny else 2, weighting="elbo", min_level=2,
        cross_fit=False))
    config.schedule = ml_collections.ConfigDict(dict(
        name="linear", num_levels=20 if tiny else 100))
    config.num_samples = 8 if tiny else 32
    config.bootstrap = 200 if tiny else 2000  # resamples of the examples, per claim

    train = toy2d.get_config("param=energy_dae")
    train.model.hidden = 16 if tiny else (256 if paper else 128)
    train.model.num_blocks = 1 if tiny else (4 if paper else 2)
    train.train.batch_size = 32 if tiny else 128
    train.train.lr = 1e-3
    train.schedule.num_levels = config.schedule.num_levels
    config.train = train
    return config
