"""Du & Kaelbling (2024) Figs. 3 and 4: factor models learn from less data and generalize
beyond it. ``tiny``, ``quick``, ``paper``.

    python scripts/run.py --config=configs/experiments/data_efficiency.py:quick \
        --workdir=runs/data_efficiency

- ``compositions`` (Fig. 4): the product ``ring * bar`` and the mixture
  ``left_bar + right_bar`` of ``configs/experiments/table2d.py`` (taken from it, not
  copied), and ``h_stripes * v_stripes`` (3 modes per factor, 9 in the product). Per size
  ``n`` in ``sizes`` and seed in ``seeds``: each factor model on ``n`` exact samples of its
  oracle, the monolithic model on ``2n`` exact samples of the composition
  (:mod:`compdiff.factorized`).
- ``samplers``: the rows each composition is sampled with, by its ``op``: reverse
  diffusion for all, and annealed MALA with in-run step adaptation (``adapt = 0.6``) for
  products. Composed and monolithic models use the same rows and keys.
- ``generalization`` (Fig. 3): a 3 x 3 grid of Gaussians, ``p(x, y) = p(x) p(y)``; the data
  are two slices of it, ``|y| <= band`` and ``|x| <= band`` (``n = claim_size`` points
  each). One 1D model per axis, composed over coordinates, against a 2D model on the union.
- ``claim_size``: the ``n`` at which the claims compare composed with monolithic.
- ``train``: ``configs/models/toy2d.py`` with ``param`` (``energy_dae``, a log-density,
  as the 2D table's energy models) and ``data.path`` set per model.

Cost (2-core CPU, shared with other jobs): ``quick`` (3 sizes, 3 seeds, 1000 steps,
60+9 models) measured at about 7 minutes (see ``docs/data_efficiency.md``): roughly 3 s
per model and 1 s per sampled cell. ``paper`` (6 sizes, 5 seeds, 3000 steps, 4 x 128
networks: 270 + 15 models at ~4x the quick per-model cost (3x the steps, a ~1.5x larger
network), plus 100-level sampling) is estimated from those numbers at 50-60 minutes;
not run here.
"""

from __future__ import annotations

import ml_collections

from configs.common import sampler_row, variant
from configs.experiments import table2d
from configs.models import toy2d

VARIANTS = ("tiny", "quick", "paper")


def get_config(arg: str | None = "quick") -> ml_collections.ConfigDict:
    name = variant(arg, VARIANTS, "data_efficiency", "quick")
    tiny, paper = name == "tiny", name == "paper"
    config = ml_collections.ConfigDict()
    config.experiment = "data_efficiency"
    config.variant = name
    config.seed = 0

    config.schedule = ml_collections.ConfigDict(dict(
        name="linear", num_levels=20 if tiny else (100 if paper else 50)))
    config.sizes = (30, 60) if tiny else ((100, 300, 1000, 3000, 10_000, 30_000) if paper
                                           else (100, 1000, 10_000))
    config.seeds = (0, 1) if tiny else ((0, 1, 2, 3, 4) if paper else (0, 1, 2))
    config.claim_size = 30 if tiny else 1000

    train = toy2d.get_config("param=energy_dae")
    train.model.hidden = 16 if tiny else (128 if paper else 64)
    train.model.num_blocks = 1 if tiny else (4 if paper else 2)
    train.train.steps = 100 if tiny else (3000 if paper else 1000)
    train.train.batch_size = 64 if tiny else 256
    train.train.lr = 1e-3
    train.train.ema_decay = 0.9 if tiny else 0.99
    train.train.log_every = train.train.steps
    train.train.checkpoint_every = train.train.steps
    train.train.keep_checkpoints = 1
    config.train = train

    config.num_samples = 100 if tiny else 1000
    config.grid = ml_collections.ConfigDict(dict(extent=2.0, size=80 if tiny else 300))
    config.figure = ml_collections.ConfigDict(dict(extent=1.5, seed=config.seeds[0]))

    source = table2d.get_config("quick").compositions
    config.composition_names = ("product", "mixture", "stripes")
    config.compositions = ml_collections.ConfigDict()
    config.compositions.product = source.product
    config.compositions.mixture = source.mixture
    config.compositions.stripes = ml_collections.ConfigDict(dict(
        op="product", components=("h_stripes", "v_stripes"), alpha=0.5, gmm_components=9,
        table=True, models=()))
    if tiny:
        config.composition_names = ("mixture",)

    config.samplers = ml_collections.ConfigDict()
    config.samplers.reverse = sampler_row("reverse")
    config.samplers.mala = sampler_row("mala", label="mala (adapted)", steps_per_level=10,
                                       step=0.002, adapt=0.6)
    # Which rows sample each composition op (a mixture is sampled by reverse diffusion).
    config.samplers_by_op = ml_collections.ConfigDict(dict(product=("reverse", "mala"),
                                                           mixture=("reverse",)))

    config.generalization = ml_collections.ConfigDict(dict(
        enabled=True, centers=(-0.6, 0.0, 0.6), std=0.08, band=0.3, sampler="reverse"))
    return config
