"""Du & Kaelbling Figs. 5 and 7 (``compdiff/experiments/trajectories.py``).

    python scripts/run.py --config=configs/experiments/trajectories.py:quick --workdir=DIR

Variants:

- ``tiny`` (tests): horizon 12 (2 windows), 4 episodes, one seed, one 10-step stage, all
  three kinds, 2 planning pairs of 4 chains with the chunk product.
- ``quick`` (the numbers of ``docs/trajectories.md``, with its measured wall time):
  horizon 16, chunks of 8 rows at stride 4 (3 windows), episodes (10, 100, 1000), 2 seeds,
  stages (500, 1500) steps, monolithic and chunk product; planning with the chunk product of
  1000 episodes, 16 pairs of 8 chains.
- ``paper``: horizon 24 (5 windows), episodes (10, 100, 1000), 3 seeds, stages (500, 1500,
  3000), all three kinds, planning with monolithic and chunk models, 40 pairs of 16 chains.
  Estimated from quick's timings on this 2-core machine (shared; about 55-80 training
  steps/s per model, ~8 s compile per model, ~15 s per evaluated row, ~1.5 s per planning
  pair and sampler): 27 models x 3000 steps ~ 23 min, 81 evaluated rows ~ 20 min, 400
  planning runs ~ 10 min: about 55 minutes, not run.
"""

from __future__ import annotations

import ml_collections

from configs.common import sampler_row, variant
from configs.models import toy2d

VARIANTS = ("tiny", "quick", "paper")


def _samplers(levels: int, coarse: int) -> list[ml_collections.ConfigDict]:
    """Reverse diffusion on all ``levels`` levels and MCMC rows on ``coarse`` respaced levels
    with ``levels / coarse - 1`` gradients per level: equal NFE (SMC: one more for its
    matched reference). The baseline: reverse diffusion without the goal well."""
    grads = levels // coarse - 1
    return [
        sampler_row("reverse", "reverse (no goal)", goal=False, levels="fine"),
        sampler_row("reverse", "reverse", goal=True, levels="fine"),
        # RRR's image settings: one reverse step into each level, then MALA / HMC steps.
        sampler_row("mala", "mala", goal=True, levels="coarse", steps_per_level=grads,
                    step=(0.035, 1.0), reverse_first=True),
        sampler_row("hmc", "hmc", goal=True, levels="coarse", steps_per_level=1,
                    leapfrog=grads, step=(0.1, 1.0), mass=(1.0, 1.0), damping=0.5,
                    reverse_first=True),
        sampler_row("mala", "mala+adapt+smc", goal=True, levels="coarse",
                    steps_per_level=grads, step=0.01, adapt=0.6, resample_ess=0.5,
                    matched_reference=True),
    ]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = variant(arg, VARIANTS, "trajectories", "quick")
    tiny, paper = name == "tiny", name == "paper"
    config = ml_collections.ConfigDict()
    config.experiment = "trajectories"
    config.variant = name
    config.seed = 0
    config.horizon = 12 if tiny else 24 if paper else 16
    config.chunk = ml_collections.ConfigDict(dict(length=8, stride=4))
    config.kinds = (("monolithic", "chunks", "junction") if tiny or paper
                    else ("monolithic", "chunks"))
    config.episodes = (4,) if tiny else (10, 100, 1000)
    config.seeds = (0,) if tiny else (0, 1, 2) if paper else (0, 1)
    config.stages = (10,) if tiny else (500, 1500, 3000) if paper else (500, 1500)
    # Training levels; planning's MCMC rows run on a respaced 1/3 of them.
    config.levels = 12 if tiny else 150

    train = toy2d.get_config("param=energy_dae")
    train.model.hidden = 32 if tiny else 128
    train.model.num_blocks = 1 if tiny else 3
    train.train.batch_size = 32 if tiny else 128
    train.train.lr = 1e-3
    train.train.ema_decay = 0.9 if tiny else 0.995
    train.train.log_every = 20 if tiny else 500
    train.train.keep_checkpoints = 1
    config.train = train

    # Start well on the first state (model units), goal well on the last position.
    config.wells = ml_collections.ConfigDict(dict(start_std=0.01, goal_std=0.03))
    # tolerance: the largest consistency error (raw units) a usable trajectory may have.
    config.eval = ml_collections.ConfigDict(dict(num_starts=8 if tiny else 100,
                                                 tolerance=0.1))
    planning = ml_collections.ConfigDict()
    planning.kinds = ("monolithic", "chunks") if paper else ("chunks",)
    planning.episodes = max(config.episodes)
    planning.seed = 0
    planning.pairs = 2 if tiny else 40 if paper else 16
    planning.chains = 4 if tiny else 16 if paper else 8
    planning.coarse_levels = config.levels // 3
    planning.radius = 0.15
    planning.min_distance = 0.3
    planning.samplers = _samplers(config.levels, planning.coarse_levels)
    planning.smc_label = "mala+adapt+smc"
    planning.reverse_label = "reverse"
    config.planning = planning
    config.figure = ml_collections.ConfigDict(dict(pairs=4))
    return config
