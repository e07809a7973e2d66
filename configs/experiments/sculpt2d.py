"""Compositional Sculpting on 2D oracles: ``quick``, ``paper``, and ``classifier`` (training only).

    python scripts/run.py --config=configs/experiments/sculpt2d.py:quick --workdir=runs/sculpt2d
    python scripts/train.py --config=configs/experiments/sculpt2d.py:classifier \
        --workdir=runs/sculpt_clf

- ``operators``: each a pair of base datasets (:mod:`compdiff.data.toy2d`,
  used as exact oracles) and a :func:`compdiff.sculpt.get` operator with its
  ``alpha``: harmonic mean and contrast of ``ring`` and ``left_half_ring``
  ("both" is the left half; "ring but not its left half" the right half),
  the paper's parameterized contrast ``alpha = 0.05``, the 3-observation
  contrast ``p1^3 / (p1 + p2)^2``, and the harmonic mean of ``ring`` and
  ``bar`` (the two ring modes inside the bar).
- ``realizations``: ``guided_exact`` (quadrature classifier), ``guided_learned``
  (the classifier trained by ``config.classifier``, one per base pair, under
  ``DIR/classifiers/``), ``algebraic``.
- ``samplers``: ``reverse`` for every realization; the annealed MCMC kernels
  (``ula``, ``uhmc``, ``mala``, ``hmc`` and the SMC versions) for the
  algebraic route, which has a log-density; ``guided_samplers`` for the guided
  ones (score-only: no Metropolis test, no SMC weights). Settings as in
  ``configs/experiments/table2d.py``; rows of ``configs/common.py``.

Every row is scored at level 1 against one exact target: the operator applied
to the bases' level-0 densities and diffused to level 1 (what exact guided
reverse diffusion samples), tabulated on a grid.
"""

from __future__ import annotations

import ml_collections

from configs.common import sampler_row, variant

VARIANTS = ("quick", "paper", "classifier")


def _operator(name: str, bases: tuple[str, str], alpha: float = 0.5,
              realizations: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(op=name, bases=bases, alpha=alpha,
                                          realizations=realizations))


def _sampler(name: str, **fields) -> ml_collections.ConfigDict:
    if name == "reverse":
        return sampler_row(name)
    return sampler_row(name, **{"damping": 0.5, **fields})


def classifier_config(bases: tuple[str, ...] = ("ring", "left_half_ring"), num_levels: int = 50,
                      steps: int = 2000) -> ml_collections.ConfigDict:
    """Training config of the learned classifier ``Q_phi(y_1, y_2 | x_t, t)`` (compdiff.train)."""
    c = ml_collections.ConfigDict()
    c.task = "sculpt_classifier"
    c.data = ml_collections.ConfigDict(dict(bases=list(bases), dataset="+".join(bases), path=""))
    c.sculpt = ml_collections.ConfigDict(dict(num_obs=2, mixture_weights=[], obs_weights=[]))
    c.model = ml_collections.ConfigDict(dict(network="sculpt_classifier", parameterization="none",
                                             hidden=64, num_blocks=2,
                                             time_embedding="sinusoidal"))
    c.schedule = ml_collections.ConfigDict(dict(name="linear", num_levels=num_levels))
    c.train = ml_collections.ConfigDict(dict(
        steps=steps, batch_size=256, lr=2e-3, grad_clip=1.0, ema_decay=0.99, seed=0,
        log_every=max(1, steps // 10), checkpoint_every=steps, keep_checkpoints=1))
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = variant(arg, VARIANTS, "sculpt2d", "quick")
    if name == "classifier":
        return classifier_config()
    quick = name == "quick"
    config = ml_collections.ConfigDict()
    config.experiment = "sculpt2d"
    config.variant = name
    config.seed = 0
    config.schedule = ml_collections.ConfigDict(dict(name="linear",
                                                     num_levels=100))
    config.num_samples = 500 if quick else 1000
    # The exact target's grid (level 1) and the level-0 quadrature grid of the
    # exact classifier (cell edges on the boxes' edges).
    config.grid = ml_collections.ConfigDict(dict(extent=2.0, size=300 if quick else 600,
                                                 extent0=1.2, size0=96))
    # Total variation between binned samples and the target on a coarse grid
    # (tv_bins^2 cells over [-extent, extent]^2).
    config.tv_bins = 30
    config.figure = ml_collections.ConfigDict(dict(extent=1.2))
    config.classifier = classifier_config(num_levels=config.schedule.num_levels,
                                          steps=1000 if quick else 3000)

    config.operator_names = (("hm", "contrast", "contrast_a005", "hm_ring_bar") if quick else
                             ("hm", "contrast", "contrast21", "contrast_a005", "contrast_pow3",
                              "hm_a005", "hm_ring_bar"))
    ring_pair = ("ring", "left_half_ring")
    config.operators = ml_collections.ConfigDict()
    config.operators.hm = _operator("harmonic_mean", ring_pair)
    config.operators.contrast = _operator("contrast", ring_pair)
    config.operators.contrast21 = _operator("contrast21", ring_pair)
    config.operators.contrast_a005 = _operator("contrast", ring_pair, alpha=0.05,
                                               realizations=("guided_exact", "algebraic"))
    config.operators.contrast_pow3 = _operator("contrast_pow3", ring_pair,
                                               realizations=("guided_exact", "algebraic"))
    config.operators.hm_a005 = _operator("harmonic_mean", ring_pair, alpha=0.05,
                                         realizations=("guided_exact", "algebraic"))
    config.operators.hm_ring_bar = _operator("harmonic_mean", ("ring", "bar"))
    config.realizations = ("guided_exact", "guided_learned", "algebraic")

    config.sampler_names = (("reverse", "ula", "hmc", "hmc_smc") if quick else
                            ("reverse", "ula", "uhmc", "mala", "hmc", "mala_smc", "hmc_smc"))
    # The samplers of the guided (score-only) realizations: reverse, and ULA for the
    # learned classifier (ULA's 11 evaluations per level would cost the quadrature
    # classifier ~10x the reverse run; the paper samples by reverse diffusion).
    config.guided_samplers = ml_collections.ConfigDict(dict(
        guided_exact=("reverse",), guided_learned=("reverse",) if quick else ("reverse", "ula")))
    config.samplers = ml_collections.ConfigDict()
    config.samplers.reverse = _sampler("reverse")
    config.samplers.ula = _sampler("ula", steps_per_level=10, step=0.002)
    config.samplers.uhmc = _sampler("uhmc", steps_per_level=3, leapfrog=3, step=0.03)
    config.samplers.mala = _sampler("mala", steps_per_level=10, step=0.002)
    config.samplers.hmc = _sampler("hmc", steps_per_level=3, leapfrog=3, step=0.03)
    config.samplers.mala_smc = _sampler("mala", steps_per_level=10, step=0.002,
                                        resample_ess=0.5)
    config.samplers.hmc_smc = _sampler("hmc", steps_per_level=3, leapfrog=3, step=0.03,
                                       resample_ess=0.5)
    return config
