"""RRR Table 3 at CPU scale: ``scripts/run.py --config=configs/experiments/guidance_table.py:<v>``.

Variants:

- ``tiny``: for tests, seconds: the ``tiny`` digits models (2 steps), 4 images per cell.
- ``quick``: digits only, half-width models trained briefly, 20 images per cell.
- ``cpu``: digits and rendered scene classes (16 px), 30 images per cell; scenes keeps the
  energy model only, digits also the eps rows, ``reverse_equal`` and the scale curve.
- ``paper``: RRR's ImageNet settings (``configs/models/guidance_models.py:paper``: 128 px,
  channels 128, multipliers 1,1,2,3,4, 2 residual blocks, 1000 levels) and its samplers
  (one reverse step, then MALA 6 steps of ``0.5 beta_t`` or HMC 2 steps x 3 leapfrog of
  ``0.6 beta_t^1.5``, mass ``beta_t``), for accelerators.

At CPU scale every MCMC row takes one reverse step into each level and one kernel step
(HMC: one leapfrog step), as the CLEVR table does, so every MCMC row costs 2 gradient
evaluations per level and ``reverse_equal`` matches it. The oracle rows (a 2D Gaussian
mixture guided by its exact posterior over components) run in every variant.
"""

from __future__ import annotations

import ml_collections

from compdiff.data import scene_classes
from compdiff.experiments import common
from configs import common as shared
from configs.common import IMAGE_ROWS, image_row, image_rows
from configs.models import classifier as classifier_configs
from configs.models import guidance_models

VARIANTS = ("tiny", "quick", "cpu", "paper")


def _row(sampler: str, models: tuple[str, ...], **kw) -> ml_collections.ConfigDict:
    return image_row(sampler, extras={"models": list(models)}, **kw)


def _with_models(row: ml_collections.ConfigDict, models: tuple[str, ...]
                 ) -> ml_collections.ConfigDict:
    row = row.copy_and_resolve_references()
    row.models = list(models)
    return row


def _rows(variant: str) -> list[ml_collections.ConfigDict]:
    if variant == "paper":
        mala = dict(steps_per_level=6, step=0.5)
        hmc = dict(steps_per_level=2, leapfrog=3, step=0.6, step_power=1.5, damping=0.9)
    else:
        mala = dict(steps_per_level=1, step=0.035)
        hmc = dict(steps_per_level=1, leapfrog=1, step=0.1, damping=0.5)
    labels = {
        "tiny": ("reverse", "hmc+smc"),  # the code paths (reverse_equal: the CLEVR table's)
        "quick": ("reverse", "hmc", "mala+adapt+smc"),
        # two SMC rows: each costs smc_population chains per class
        "cpu": tuple(r for r in IMAGE_ROWS if r != "mala+smc"),
    }.get(variant, IMAGE_ROWS)
    # eps cells of Metropolis rows are "n/a" rows with the reason (score-only model).
    return image_rows(mala, hmc, ["eps", "energy"], labels=labels,
                      models_of={"reverse_equal": ["eps"], "mala+adapt": ["energy"],
                                 "mala+adapt+smc": ["energy"]})


def _energy_rows(rows: list[ml_collections.ConfigDict]) -> list[ml_collections.ConfigDict]:
    """Reverse diffusion against HMC on the energy model (RRR's Table 3 pair)."""
    return [_with_models(r, ("energy",)) for r in rows
            if common.row_label(r) in ("reverse", "hmc")]


def _dataset(name: str, variant: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_images = {"tiny": 4, "quick": 20, "cpu": 30, "paper": 1000}[variant]
    config.num_real = {"tiny": 16, "quick": 200, "cpu": 297, "paper": 10_000}[variant]
    config.scale = 1.0 if variant == "paper" else 3.0
    config.classifier_free = variant != "quick"
    # SMC rows run each class as its own population (one call, the driver's populations)
    # of at least this many chains, or as many as the class has images (docs/smc.md).
    config.smc_population = {"tiny": 2, "paper": 16}.get(variant, 8)
    config.rows = _rows(variant)
    model_name = "tiny" if variant == "tiny" else ("paper" if variant == "paper" else name)
    clf_name = f"{name},tiny" if variant == "tiny" else name
    models = ml_collections.ConfigDict()
    models.eps = guidance_models.get_config(f"{model_name},param=eps")
    models.energy = guidance_models.get_config(f"{model_name},param=energy_dae")
    models.conditional = guidance_models.get_config(f"{model_name},param=eps,conditional=True")
    models.classifier = classifier_configs.get_config(f"{clf_name},noisy=True")
    models.judge = classifier_configs.get_config(clf_name)
    if variant in ("quick", "cpu"):
        # Half-width UNets (channels 16) and short runs, to fit 10 (quick) and 60 (cpu)
        # minutes on 2 cores; scenes at 16 px (the clean classifier still reaches 0.996).
        steps = {"quick": 800, "cpu": 1000}[variant]
        for kind in ("eps", "energy", "conditional"):
            models[kind].model.channels = 16
            models[kind].train.steps = steps
        models.classifier.train.steps = {"quick": 600, "cpu": 1500}[variant]
        models.judge.train.steps = {"quick": 600, "cpu": 1000}[variant]
    if variant == "paper":  # the classifiers read the generator's 128 px images
        for kind in ("classifier", "judge"):
            models[kind].data = models.energy.data.copy_and_resolve_references()
            models[kind].data.example = "class_label"
    base = models.energy.schedule
    equal = common.equal_nfe(config.rows, base.name, base.num_levels)
    models.eps_equal = guidance_models.get_config(f"{model_name},param=eps")
    models.eps_equal.model.channels = models.eps.model.channels
    models.eps_equal.train.steps = models.eps.train.steps
    models.eps_equal.schedule.num_levels = equal.levels
    config.models = models
    if name == "scenes":
        # The joint classifier and the generator never see the held-out pairs, so the main
        # rows ask for the 9 seen pairs; the held-out block asks for the other 3 by
        # composing one classifier per attribute (and, for contrast, by the joint one).
        held = {scene_classes.class_label(s, c) for s, c in scene_classes.HELD_OUT}
        config.classes = [c for c in range(scene_classes.NUM_CLASSES) if c not in held]
        config.attribute_pairs = ml_collections.ConfigDict()
        config.attribute_pairs.pairs = [list(p) for p in scene_classes.HELD_OUT]
        config.attribute_pairs.num_images = config.num_images
        config.attribute_pairs.rows = _energy_rows(config.rows)
        models.shape_classifier = classifier_configs.get_config(
            f"{clf_name},noisy=True,attribute=shape")
        models.colour_classifier = classifier_configs.get_config(
            f"{clf_name},noisy=True,attribute=colour")
        if variant == "cpu":
            # To fit 60 minutes, scenes keeps the energy model only (RRR's Table 3 pair is
            # on it; digits carries the eps rows, reverse_equal and the scale curve).
            config.rows = [_with_models(r, ("energy",)) for r in config.rows
                           if "energy" in r.models]
            models.shape_classifier.train.steps = models.colour_classifier.train.steps = 1000
            for model in models.values():
                model.data.builder_config = model.data.builder_config.replace("32px", "16px")
    config.scale_curve = ml_collections.ConfigDict()
    # The curve's point at config.scale is the main row's (not sampled again).
    config.scale_curve.scales = {"tiny": [1.0], "quick": [1.0], "cpu": [1.0, 10.0]}.get(
        variant, [0.0, 1.0, 3.0, 10.0])
    if name == "scenes" and variant == "cpu":
        config.scale_curve.scales = []  # the curve's one point is the main rows'
    config.scale_curve.rows = _energy_rows(config.rows)
    if variant == "tiny":  # the reverse row's compiled sampler serves the curve too
        config.scale_curve.rows = config.scale_curve.rows[:1]
    return config


def _oracle(variant: str) -> ml_collections.ConfigDict:
    """Two overlapping Gaussians: guidance toward the first (the exact target is on a grid)."""
    config = ml_collections.ConfigDict()
    config.means = [[-0.4, 0.0], [0.4, 0.0]]
    config.std = 0.3
    config.schedule = "linear"
    config.num_levels = 20 if variant == "tiny" else 100
    config.component = 0
    config.scales = [1.0, 3.0]
    config.num_samples = 1000
    config.extent = 2.0
    config.grid_size = 200
    # The 2D table's settings (configs/experiments/table2d.py:paper): constant steps, HMC mass 1.
    mala = dict(steps_per_level=10, step=0.002, step_power=0.0)
    hmc = dict(steps_per_level=3, leapfrog=3, step=0.03, step_power=0.0, mass_power=0.0,
               damping=0.5)
    config.rows = [_row("reverse", ("exact",)), _row("ula", ("exact",), **mala),
                   _row("uhmc", ("exact",), **hmc), _row("mala", ("exact",), **mala),
                   _row("hmc", ("exact",), **hmc),
                   _row("mala", ("exact",), smc=True, **mala),
                   _row("hmc", ("exact",), smc=True, **hmc)]
    if variant in ("tiny", "quick"):
        config.rows = [config.rows[i] for i in (0, 4)]
        config.num_samples = 300 if variant == "tiny" else 500
    if variant == "tiny":
        config.scales, config.grid_size = [3.0], 100
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = shared.variant(arg, VARIANTS, "guidance_table", "cpu")
    config = ml_collections.ConfigDict()
    config.experiment = "guidance_table"
    config.variant = variant
    config.seed = 0
    config.data_dir = guidance_models.DEFAULT_DATA_DIR
    config.datasets = {"tiny": ["digits"], "quick": ["digits"], "cpu": ["digits", "scenes"],
                       "paper": ["imagenet"]}[variant]
    config.dataset_configs = ml_collections.ConfigDict(
        {name: _dataset(name, variant) for name in config.datasets})
    config.oracle = _oracle(variant)
    return config
