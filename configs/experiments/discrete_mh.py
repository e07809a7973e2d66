"""Discrete composition by Metropolis-Hastings (Du & Kaelbling section 5.3): ``tiny``,
``quick``, ``paper``.

    python scripts/run.py --config=configs/experiments/discrete_mh.py:quick --workdir=DIR

The target (``compdiff/experiments/discrete_mh.py``): binary strings of ``target.length``
bits, ``p ∝ q e^{-E_1 - E_2}`` with ``E_1`` "about ``count`` ones" and ``E_2`` "no two adjacent
ones". ``quick``: L = 12 (4096 states), 2000 chains, 600 evaluations, 5 seeds.
``paper``: L = 14 (16384 states), 8000 chains, 1050 evaluations, 10 seeds; estimated from
quick's measured chain time (about 150 s of its 3.3 minutes, docs/discrete_composition.md)
times 4x chains, 1.75x steps and 2x seeds, about 40 minutes on the 2-core machine (not run
here).
``tiny``: L = 6, for tests.

Fields are overridable on the command line, e.g. ``--config.target.adjacent_weight=4``.
"""

from __future__ import annotations

import ml_collections

from configs.common import variant

VARIANTS = ("tiny", "quick", "paper")


def get_config(arg: str | None = "quick") -> ml_collections.ConfigDict:
    name = variant(arg, VARIANTS, "discrete_mh", "quick")
    tiny, paper = name == "tiny", name == "paper"
    config = ml_collections.ConfigDict()
    config.experiment = "discrete_mh"
    config.variant = name
    config.seed = 0
    config.num_seeds = 2 if tiny else (10 if paper else 5)

    config.target = ml_collections.ConfigDict(dict(
        length=6 if tiny else (14 if paper else 12),
        count=2 if tiny else (5 if paper else 4),
        count_weight=4.0,  # E_1 = count_weight (|x| - count)^2
        adjacent_weight=4.0,  # E_2 = adjacent_weight * #adjacent ones
        field=1.0,  # log q(x) = sum_i h_i x_i, h a ramp from -field to +field
    ))
    # The learned proposal (compdiff.discrete.AutoregressiveBits) fit to exact p_1 samples.
    config.train = ml_collections.ConfigDict(dict(
        num_samples=500 if tiny else 5000, hidden=16 if tiny else 32,
        steps=200 if tiny else 1500, batch_size=256, lr=3e-3))

    config.methods = ("mh_learned", "mh_paper", "mh_exact_factor", "gibbs", "local_flip")
    config.num_chains = 500 if tiny else (8000 if paper else 2000)
    config.record_every = 3 if tiny else (7 if paper else 6)  # half a Gibbs sweep
    config.num_records = 10 if tiny else (150 if paper else 100)
    config.tv_margin = 0.05
    return config
