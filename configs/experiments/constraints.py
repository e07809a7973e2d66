"""Constraint composition (Du & Kaelbling Fig. 8): ``tiny``, ``quick``, ``paper``.

    python scripts/run.py --config=configs/experiments/constraints.py:quick --workdir=DIR

Three pair relation models (``left_of``, ``near``, ``not_overlapping``; 4D energy MLPs of
``configs/models/toy2d.py`` trained on ``data.path`` pair files) composed over graphs of ``n``
objects (``compdiff/experiments/constraints.py``). Samplers at equal NFE
``4T`` (+1 for the matched reference): ``ula``, ``mala`` (3 steps per level) and ``hmc`` (1
step x 3 leapfrog), each after a reverse step into every level (RRR), and ``mala+adapt+smc``
(adapted MALA SMC, adapt 0.6, matched reference), against ``reverse`` diffusion at ``T``.

``quick``: T = 50, 3 x 128 MLPs trained 2000 steps, n in {2, 4, 8}, 3 graphs per n, 128
samples per graph. ``paper``: T = 100, 4 x 128 MLPs trained 6000 steps, n in {2, 3, 4, 6, 8},
5 graphs per n, 256 samples: from quick's measured time (docs/constraint_composition.md),
about 3x its training and 4-5x its sampling (5/3 as many n and graphs, 2x samples, 2x levels,
compile time fixed per n), 40-50 minutes on the 2-core machine (not run here). ``tiny``: for tests.
"""

from __future__ import annotations

import ml_collections

from configs.common import sampler_row, variant
from configs.models import toy2d

VARIANTS = ("tiny", "quick", "paper")


def get_config(arg: str | None = "quick") -> ml_collections.ConfigDict:
    name = variant(arg, VARIANTS, "constraints", "quick")
    tiny, paper = name == "tiny", name == "paper"
    config = ml_collections.ConfigDict()
    config.experiment = "constraints"
    config.variant = name
    config.seed = 0

    config.geometry = ml_collections.ConfigDict(dict(object_radius=0.1, near_radius=0.5,
                                                     margin=0.1))
    config.train_pairs = 2000 if tiny else 50_000
    train = toy2d.get_config("param=energy_dae")
    train.model.hidden = 32 if tiny else 128
    train.model.num_blocks = 2 if tiny else (4 if paper else 3)
    train.schedule.num_levels = 10 if tiny else (100 if paper else 50)
    train.train.steps = 60 if tiny else (6000 if paper else 2000)
    train.train.batch_size = 64 if tiny else 256
    train.train.ema_decay = 0.9 if tiny else 0.999
    train.train.log_every = 20 if tiny else 500
    train.train.checkpoint_every = train.train.steps
    train.train.keep_checkpoints = 1
    config.train = train

    config.num_objects = (2, 3) if tiny else ((2, 3, 4, 6, 8) if paper else (2, 4, 8))
    config.num_graphs = 1 if tiny else (5 if paper else 3)
    config.num_samples = 16 if tiny else (256 if paper else 128)
    config.witness_tries = 2000 if tiny else 20_000

    config.sampler_names = (("reverse", "mala_smc") if tiny
                            else ("reverse", "ula", "mala", "hmc", "mala_smc"))
    config.samplers = ml_collections.ConfigDict()
    config.samplers.reverse = sampler_row("reverse")
    # RRR's annealed MCMC: one reverse step into each level, then the kernel's steps.
    config.samplers.ula = sampler_row("ula", steps_per_level=3, step=0.002, reverse_first=True)
    config.samplers.mala = sampler_row("mala", steps_per_level=3, step=0.002,
                                       reverse_first=True)
    config.samplers.hmc = sampler_row("hmc", steps_per_level=1, leapfrog=3, step=0.03,
                                      reverse_first=True)
    # Adapted MALA SMC from the matched reference (the highdim table's best row).
    config.samplers.mala_smc = sampler_row("mala", steps_per_level=3, step=0.01, adapt=0.6,
                                           resample_ess=0.5, matched_reference=True)
    return config
