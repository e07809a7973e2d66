"""Samplers on exact high-dimensional compositions (``compdiff/experiments/highdim.py``).

    python scripts/run.py --config=configs/experiments/highdim.py:cpu --workdir=runs/highdim

Families of rows (``family``), each at a few costs so the figures show error
against NFE:

- ``reverse``: reverse diffusion at 100, 300, 1000 levels.
- ``rrr_*``: RRR's image settings, one reverse step into each level, then one
  kernel step (ULA / MALA ``0.035 beta_t``; U-HMC / HMC ``0.1 beta_t``, mass
  ``beta_t``, one leapfrog step).
- ``smc_rrr``: today's SMC, HMC at RRR's fixed steps with resampling at ESS
  0.5, one step per level and 10 x 3 leapfrog.
- ``mala_adapt``: annealed MALA with the step adapted toward acceptance 0.6,
  no resampling.
- ``smc_mala_adapt`` / ``smc_hmc_adapt``: SMC on annealed importance weights,
  adapted moves (0.6 / 0.7), resampling at ESS 0.5, from the matched
  ``N(0, c I)`` reference.
- ``smc_reverse``: the reverse step as the SMC proposal, alone and with
  adapted MALA moves (resample-move).
- ``fkc``: reverse diffusion with Feynman-Kac corrector weights (score-only),
  at 100, 300, 1000 levels.

Variants: ``tiny`` (tests, seconds), ``quick`` (product at d = 2, 64, 256,
guided at 64), ``cpu`` (the results page: product at d = 2, 64, 256, 1024,
guided at 256; every family at two or three costs), ``full`` (every row above
at every cost, both targets at more dimensions: over two hours on 2 cores).
"""

from __future__ import annotations

import ml_collections

from configs.common import sampler_row, variant

VARIANTS = ("tiny", "quick", "cpu", "full")


def _rows(full: bool) -> list[ml_collections.ConfigDict]:
    rrr_mala = dict(steps_per_level=1, step=(0.035, 1.0), reverse_first=True)
    rrr_hmc = dict(steps_per_level=1, step=(0.1, 1.0), mass=(1.0, 1.0), leapfrog=1,
                   damping=0.5, reverse_first=True)
    smc = dict(resample_ess=0.5, matched_reference=True, step=0.01)
    rows = [sampler_row("reverse", "reverse", family="reverse", levels=100)]
    rows += [sampler_row("reverse", f"reverse_T{t}", family="reverse", levels=t)
             for t in ((300, 1000) if full else (300,))]
    rows += [sampler_row("mala", "rrr_mala", family="rrr_mala", **rrr_mala),
             sampler_row("hmc", "rrr_hmc", family="rrr_hmc", **rrr_hmc)]
    if full:
        rows += [sampler_row("ula", "rrr_ula", family="rrr_ula", **rrr_mala),
                 sampler_row("uhmc", "rrr_uhmc", family="rrr_uhmc", **rrr_hmc)]
    smc_rrr = dict(step=(0.1, 1.0), mass=(1.0, 1.0), damping=0.5, resample_ess=0.5)
    rows += [sampler_row("hmc", "smc_rrr_1x1", family="smc_rrr", steps_per_level=1, leapfrog=1,
                         **smc_rrr)]
    if full:
        rows += [sampler_row("hmc", "smc_rrr_10x3", family="smc_rrr", steps_per_level=10,
                             leapfrog=3, **smc_rrr)]
    for k in (3,):
        rows.append(sampler_row("mala", f"mala_adapt_{k}", family="mala_adapt",
                                steps_per_level=k, step=0.01, adapt=0.6, matched_reference=True))
    for k in (2, 5, 9):
        rows.append(sampler_row("mala", f"smc_mala_adapt_{k}", family="smc_mala_adapt",
                                steps_per_level=k, adapt=0.6, **smc))
    for k in (1, 3) if full else (1,):
        rows.append(sampler_row("hmc", f"smc_hmc_adapt_{k}x3", family="smc_hmc_adapt",
                                steps_per_level=k, leapfrog=3, adapt=0.7, **smc))
    rows.append(sampler_row("reverse", "smc_reverse", family="smc_reverse",
                            resample_ess=0.5, matched_reference=True))
    for k in (1, 3) if full else (1,):
        rows.append(sampler_row("mala", f"smc_reverse_mala_{k}", family="smc_reverse",
                                steps_per_level=k, adapt=0.6, reverse_first=True, **smc))
    for t in (100, 300, 1000) if full else (100, 300):
        rows.append(sampler_row("reverse", f"fkc_T{t}", family="fkc", levels=t, fkc=True,
                                resample_ess=0.5, matched_reference=True))
    return rows


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = variant(arg, VARIANTS, "highdim", "cpu")
    config = ml_collections.ConfigDict()
    config.experiment = "highdim"
    config.variant = name
    config.seed = 0
    config.schedule = "linear"
    config.levels = 100
    # The dimensions each target runs at.
    config.targets = {"tiny": {"product": [8]},
                      "quick": {"product": [2, 64, 256], "guided": [64]},
                      "cpu": {"product": [2, 64, 256, 1024], "guided": [256]},
                      "full": {"product": [2, 16, 64, 256, 1024],
                               "guided": [2, 64, 256, 1024]}}[name]
    config.dims = sorted({d for dims in config.targets.values() for d in dims})
    config.chains = {"tiny": 128, "quick": 500}.get(name, 1000)
    config.floor_repeats = {"tiny": 10, "quick": 100}.get(name, 200)
    config.samplers = _rows(full=name == "full")
    if name == "tiny":  # one cheap row per kind of weight
        config.samplers = [r for r in config.samplers
                           if r.label in ("reverse", "smc_mala_adapt_2", "fkc_T100")]
    config.claim_dims = [d for d in (256, 1024) if d in config.dims]
    config.claim_nfe_ratio = 10.0
    return config
