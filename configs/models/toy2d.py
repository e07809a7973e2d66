"""Training configs for the 2D toy datasets (RRR section 5.1 and its 2D code).

Variants are comma-separated ``key=value`` pairs after the file name, as in big_vision::

    --config=configs/models/toy2d.py:dataset=ring,param=energy_l2

- ``dataset``: one of :func:`compdiff.data.toy2d.names` (default ``ring``).
- ``param``: the parameterization, ``eps``, ``energy_l2``, ``energy_dae`` or
  ``energy_ip`` (default ``energy_l2``).

Any other field is overridden on the command line, e.g.
``--config.train.steps=200 --config.model.time_embedding=learned``.

Architecture (:class:`compdiff.models.ResidualMLP`): ``model.widen`` (an integer
>= 1; each residual block's inner width is ``widen * hidden``) and
``model.norm`` (``none`` or ``layernorm``). The defaults, ``widen=1``,
``norm=none``, are the network of every earlier run;
``--config.model.widen=2 --config.model.norm=layernorm`` is the authors' (RRR's)
2D network: 4 blocks, hidden 128, inner width 256, LayerNorm. A bad value
raises a ``ValueError`` naming the field when the network is built.

Your own data: ``--config.data.path=points.npz`` trains on the points in a
``.npz`` file, an ``[n, d]`` float array under key ``x`` (or the file's only
array); any ``d`` works, see :mod:`compdiff.data.points`. A non-empty
``data.path`` overrides ``data.dataset``, and the model is named after the
file's stem. Training stores the data dimension as ``model.dim`` in the
work directory's ``config.json`` (there is no such field here: it comes from
the data).
"""

from __future__ import annotations

import ml_collections

from compdiff.data import toy2d
from compdiff.models.diffusion import PARAMETERIZATIONS
from configs import common

_VARIANTS = {"dataset": toy2d.names(), "param": list(PARAMETERIZATIONS)}
_DEFAULTS = {"dataset": "ring", "param": "energy_l2"}


def parse_variant(arg: str | None) -> dict[str, str]:
    """``"dataset=ring,param=eps"`` -> ``{"dataset": "ring", "param": "eps"}`` over the defaults."""
    return common.parse_variant(arg, keys=_VARIANTS, defaults=_DEFAULTS)

def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = parse_variant(arg)
    config = ml_collections.ConfigDict()

    config.data = ml_collections.ConfigDict()
    config.data.dataset = variant["dataset"]
    config.data.path = ""  # a points .npz file; when set it overrides data.dataset

    config.model = ml_collections.ConfigDict()
    config.model.parameterization = variant["param"]
    config.model.hidden = 128
    config.model.num_blocks = 4
    config.model.time_embedding = "sinusoidal"  # or "learned"
    config.model.widen = 1  # inner width of each block = widen * hidden; RRR: 2
    config.model.norm = "none"  # or "layernorm" (RRR's)

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "linear"
    config.schedule.num_levels = 100

    config.train = ml_collections.ConfigDict()
    config.train.steps = 15_000
    config.train.batch_size = 1000
    config.train.lr = 1e-3
    config.train.ema_decay = 0.999
    config.train.grad_clip = 1.0
    config.train.log_every = 500
    config.train.checkpoint_every = 2500
    config.train.keep_checkpoints = 3
    config.train.seed = 0
    return config
