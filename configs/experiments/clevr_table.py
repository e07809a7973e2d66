"""RRR Table 2 at CPU scale: ``scripts/run.py --config=configs/experiments/clevr_table.py:<v>``.

Variants:

- ``tiny``: for tests, seconds: the ``tiny`` data, 4-step models, 4 images per cell.
- ``quick``: under 10 minutes from nothing: the ``cpu`` energy model and classifier
  trained briefly (800 and 300 steps; the eps models are skipped: at 400 steps an eps
  model placed no object where asked, against 0.62 for the energy model), reverse
  diffusion, ULA, HMC and adapted MALA SMC on 8 images per cell at 1 and 3 positions.
- ``cpu``: the README table: 1..5 positions, 16 images per cell, every row but
  ``mala+smc`` (whose kernels alone do not follow the annealing at one step per
  level, as ``hmc+smc`` shows); under 60 minutes from nothing on 2 CPU cores, ~28 of
  them training.
- ``cpu_full``: the same models, 32 images per cell and every row: about 40 minutes
  of sampling here.
- ``cpu_smc``: the ``cpu`` energy model (link ``models/`` of a ``cpu`` run into the
  workdir to reuse it) and the SMC rows against reverse diffusion and adapted MALA, at 1
  and 3 positions: the check of ``docs/clevr.md`` (21.5 min here with the models).
- ``paper``: RRR's models (``configs/models/clevr.py:paper``), for accelerators.

Samplers as RRR runs them on images: one reverse step into each level, then
the kernel steps; MALA step ``0.035 beta_t``, HMC step ``0.1 beta_t`` with mass
``beta_t``. HMC damping is 0.5 here, not RRR's 0.9: with few kernel steps per
level 0.9 under-dissipates (``docs/design_notes.md``, the 2D damping study). At
CPU scale every MCMC row takes one kernel step per level (HMC with one leapfrog
step), so all cost 2 gradient evaluations per level. ``reverse_equal`` matches
the NFE of the costliest MCMC row with an eps model trained on the longer
schedule that ends at the same noise level.
"""

from __future__ import annotations

import ml_collections

from compdiff.experiments import common
from configs import common as shared
from configs.common import IMAGE_ROWS, image_row, image_rows
from configs.models import clevr, clevr_classifier

VARIANTS = ("tiny", "quick", "cpu", "cpu_full", "cpu_smc", "paper")


def _row(sampler: str, models: tuple[str, ...], **kw) -> ml_collections.ConfigDict:
    return image_row(sampler, extras={"models": list(models)}, **kw)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = shared.variant(arg, VARIANTS, "clevr_table", "cpu")
    size = {"tiny": "tiny", "paper": "paper"}.get(variant, "cpu")
    config = ml_collections.ConfigDict()
    config.experiment = "clevr_table"
    config.variant = variant
    config.seed = 0
    config.data_dir = clevr.DEFAULT_DATA_DIR  # for every model's data
    # w of log p(x) + w sum_i [log p(x|c_i) - log p(x)]: 1 is Bayes' rule; the small CPU
    # models place a single object at its position 0.45 of the time at w = 1 and 0.84 at
    # w = 3 after 800 steps (reverse diffusion, 64 images), so the CPU table uses 3.
    config.guidance_scale = 1.0 if variant in ("tiny", "paper") else 3.0
    config.num_images = {"tiny": 4, "quick": 8, "cpu_full": 32, "paper": 256}.get(variant, 16)
    # Pad every K to the largest with zero-weight conditions: one compilation per sampler
    # instead of one per (sampler, K), at the price of computing the padded rows.
    config.pad_conditions = False
    # SMC rows resample across chains, and every image asks for its own positions, so each
    # image runs as its own population of this many chains (the cost is this many times
    # the row's NFE per image). Before this, one population held every image's positions
    # and resampling moved chains between them (accuracy 0.00-0.06 on the cpu table).
    config.smc_population = {"tiny": 2, "paper": 16}.get(variant, 4)
    config.num_positions = {"tiny": [2], "quick": [1, 3], "cpu_smc": [1, 3]}.get(
        variant, [1, 2, 3, 4, 5])
    config.grid_positions = {"tiny": [2], "cpu_smc": [3]}.get(variant, [1, 3, 5])
    config.classifier_eval_images = {"tiny": 16, "quick": 200, "paper": 5000}.get(variant, 1000)

    # One kernel step per level after the reverse step (2 gradient evaluations per level
    # for every MCMC row, so they compare at equal NFE); RRR runs more on accelerators.
    steps = 1 if variant != "paper" else 4
    leapfrog = 1 if variant != "paper" else 3
    hmc = dict(steps_per_level=steps, step=0.1, leapfrog=leapfrog, damping=0.5)
    mala = dict(steps_per_level=steps, step=0.035)
    # eps cells of Metropolis rows are "n/a" rows with the reason (score-only model).
    labels = {
        "tiny": ("reverse", "reverse_equal", "mala", "hmc+smc"),  # every kind of row
        "quick": ("reverse", "ula", "hmc", "mala+adapt+smc"),
        "cpu": tuple(r for r in IMAGE_ROWS if r != "mala+smc"),
        "cpu_smc": ("reverse", "mala+adapt", "hmc+smc", "mala+adapt+smc"),
    }.get(variant, IMAGE_ROWS)
    energy_only = variant in ("quick", "cpu_smc")
    config.rows = image_rows(mala, hmc, ["energy"] if energy_only else ["eps", "energy"],
                             labels=labels, models_of={"reverse_equal": ["eps"]})
    config.curve = ml_collections.ConfigDict()
    config.curve.num_positions = 3 if variant != "tiny" else 1
    config.curve.steps = {"tiny": [1], "quick": [1, 2]}.get(variant, [1, 2, 4])
    config.curve.rows = [_row("hmc", ("energy",), **{**hmc, "steps_per_level": 1})]
    if variant == "cpu_smc":
        config.curve.steps, config.curve.rows = [], []

    models = ml_collections.ConfigDict()
    models.eps = clevr.get_config(f"{size},param=eps")
    models.energy = clevr.get_config(f"{size},param=energy_dae")
    models.classifier = clevr_classifier.get_config(size)
    if variant == "quick":
        models.energy.train.steps = 800
        models.classifier.train.steps = 300
    config.models = models
    # reverse_equal: the same eps model on the T'-level schedule that spends the costliest
    # MCMC row's NFE from T' down to the level whose noise is sigma_1 of the T schedule.
    base = models.energy.schedule
    equal = common.equal_nfe(config.rows, base.name, base.num_levels)
    models.eps_equal = clevr.get_config(f"{size},param=eps")
    models.eps_equal.schedule.num_levels = equal.levels
    models.eps_equal.train.steps = models.eps.train.steps
    return config
